"""Task models on the shipped shared CNN encoder: its weights referenced, never copied; LoRA apart.

Why one module: registration and synthesis (and any task after them) store only their own head,
record the SHA-256 of the installed ``radfm/starter/cnn_encoder/model.safetensors``, load the
encoder's weights back from there (refusing another encoder), then apply their encoder LoRA saved
apart in ``encoder_adapter/``. The same lines were written once per task.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.errors import ConfigError

__all__ = ["ADAPTER_SUBDIR", "SHARED_ENCODER_REF", "attach_shared_encoder", "build_on_shared_encoder", "file_sha256",
           "save_with_adapter_apart", "shared_encoder_sha256"]

ADAPTER_SUBDIR = "encoder_adapter"
SHARED_ENCODER_REF = "radfm/starter/cnn_encoder"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shared_encoder_sha256(kind: str = "cnn") -> str:
    """SHA-256 of the installed starter encoder's ``model.safetensors`` (``kind``: "cnn" or "vit")."""
    from radfm.starter import starter_encoder_path

    return file_sha256(starter_encoder_path(kind) / "model.safetensors")


def build_on_shared_encoder(model_cls: Any, config_cls: Any, **config_kwargs: Any) -> Any:
    """A new task model around the shared CNN encoder: its weights loaded, its file SHA-256 recorded."""
    from radfm.starter import load_starter_encoder

    encoder = load_starter_encoder(kind="cnn")
    config = config_cls(encoder_config=encoder.config.to_dict(), encoder_source="shared",
                        encoder_sha256=shared_encoder_sha256("cnn"), **config_kwargs)
    model = model_cls(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


def attach_shared_encoder(model: nn.Module, path: Path, *, expected_sha256: str | None, retrain_hint: str,
                          merge_adapter: bool = True) -> Any:
    """Load the shared CNN's weights into ``model.encoder`` (file SHA checked), then ``path/encoder_adapter``.

    ``model.plan`` survives the peft wrapping. Returns the model (merged) or its peft wrapper.
    """
    from radfm.starter import load_starter_encoder

    sha = shared_encoder_sha256("cnn")
    if expected_sha256 and sha != expected_sha256:
        raise ConfigError(f"{path} was trained on another shared encoder (sha256 {expected_sha256[:12]}…, installed "
                          f"{SHARED_ENCODER_REF} is {sha[:12]}…).", retrain_hint)
    model.encoder.load_state_dict(load_starter_encoder(kind="cnn").state_dict())
    adapter = path / ADAPTER_SUBDIR
    if not adapter.is_dir():
        return model.eval()
    from radfm.adapters.io import load_encoder_adapter

    plan = getattr(model, "plan", None)
    loaded = load_encoder_adapter(model, adapter, merge=merge_adapter)
    (loaded.get_base_model() if hasattr(loaded, "peft_config") else loaded).plan = plan
    return loaded.eval()


def save_with_adapter_apart(model: Any, out: str | Path, *, task: str,
                            state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """``save_pretrained`` of the base model; a peft model's encoder LoRA goes APART into ``encoder_adapter/``.

    A stale ``encoder_adapter/`` of an earlier save is removed when ``model`` has no adapter (it
    would otherwise be applied to this model on load).
    """
    from radfm.adapters.io import save_encoder_adapter

    out = Path(out)
    is_peft = hasattr(model, "peft_config")
    base = model.get_base_model() if is_peft else model
    if state_dict is None:
        base.save_pretrained(out)
    else:
        base.save_pretrained(out, state_dict=state_dict)
    adapter = out / ADAPTER_SUBDIR
    if is_peft:
        save_encoder_adapter(model, adapter, task=task, base_encoder=SHARED_ENCODER_REF)
    elif adapter.is_dir():
        shutil.rmtree(adapter)
    return out
