"""The base encoder an adapter belongs to: found in a model, fingerprinted, and checked at load.

Why: an adapter applied to an encoder it was not trained on runs without error and gives wrong
outputs. Every adapter records :func:`encoder_sha256` of its encoder in ``radfm_adapter.json``, and
every loader refuses a mismatch through the one check here, with the one error type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.errors import ConfigError, InputError

__all__ = ["check_base_encoder", "encoder_of", "encoder_sha256"]


def encoder_of(model: nn.Module) -> nn.Module:
    """The shared encoder of ``model`` (a RadFMEncoder, a task model with ``.encoder``, or a PeftModel)."""
    from peft import PeftModel

    from radfm.models.encoder import RadFMEncoder

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if isinstance(base, RadFMEncoder):
        return base
    encoder = getattr(base, "encoder", None)
    if encoder is None:
        raise InputError(f"{type(base).__name__} has no shared encoder (.encoder).",
                         "LoRA adapters in radfm adapt the shared RadFMEncoder of a task model.")
    return encoder


def encoder_sha256(model: nn.Module) -> str:
    """SHA-256 of the base encoder's weights (names, dtypes, shapes, bytes), LoRA layers ignored.

    Why the weights and not the file: the same weights saved twice (or re-sharded) must match, and
    an adapter trained on one encoder must be refused on another. Accepts a ``RadFMEncoder``, any
    task model whose ``encoder`` is one, or a PeftModel around either.
    """
    encoder = encoder_of(model)
    h = hashlib.sha256()
    entries = {}
    for name, tensor in encoder.state_dict().items():
        if "lora_" in name:
            continue
        entries[name.replace(".base_layer", "")] = tensor
    for name in sorted(entries):
        t = entries[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_base_encoder(record: Mapping[str, Any], found_sha256: str, meta_file: str | Path, *,
                       name: str | None = None) -> None:
    """Raise ConfigError when ``record`` (a ``radfm_adapter.json``) names another encoder than ``found_sha256``.

    ``meta_file`` is where ``record`` was read (named in the message); ``name`` the adapter's name
    when the caller loads several. A record without a SHA-256 (hand-written) is not refused.
    """
    base = record.get("base_encoder") or {}
    expected = base.get("sha256")
    if not expected or expected == found_sha256:
        return
    who = f"adapter {name!r}" if name else "the adapter"
    trained_path = f" ({base['path']})" if base.get("path") else ""
    raise ConfigError(
        f"{who} ({meta_file}) was trained on encoder {expected[:12]}…{trained_path}, but this model's "
        f"encoder is {found_sha256[:12]}… (SHA-256 of the encoder weights, see encoder_sha256).",
        "Build the model from the encoder the adapter was trained on (base_encoder in radfm_adapter.json).",
    )
