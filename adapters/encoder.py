"""Encoder-only LoRA: adapters for task models that ship their own head.

Why a second kind: prompt segmentation, registration and the report bridge keep their head in the
task's own weights, so their adapter is the encoder's LoRA factors alone (saved with
:func:`radfm.adapters.io.save_encoder_adapter`, usually merged at load so inference runs without
peft), unlike the per-adapter heads of :mod:`radfm.adapters.heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.adapters.base_encoder import encoder_of
from radfm.adapters.registry import registry
from radfm.adapters.spec import LoraSpec, resolve_spec

__all__ = ["attach_encoder_lora", "inject_encoder_lora"]


def attach_encoder_lora(
    model: nn.Module,
    spec: LoraSpec | None = None,
    *,
    trainable_modules: Sequence[str] = (),
    adapter_name: str = "default",
) -> Any:
    """Wrap ``model`` with peft LoRA on its encoder; ``trainable_modules`` (attribute names) stay trainable.

    Unlike :func:`radfm.adapters.heads.attach_lora`, the head is not a per-adapter peft copy: it
    belongs to the task model and is saved with it, so the adapter directory holds only the
    encoder's LoRA factors.
    """
    from peft import get_peft_model

    encoder = encoder_of(model)
    spec = resolve_spec(spec, encoder)
    peft_model = get_peft_model(model, spec.to_peft_config(modules_to_save=()), adapter_name=adapter_name)
    for name in trainable_modules:
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    registry(peft_model).meta[adapter_name] = {"lora": spec.to_dict(), "modules_to_save": []}
    return peft_model


def inject_encoder_lora(model: nn.Module, spec: LoraSpec | None = None, *, adapter_name: str = "default") -> nn.Module:
    """Add LoRA layers to ``model.encoder`` in place (no PeftModel wrapper); only they train.

    For task trainers that fold the update back into their own checkpoint with
    :func:`radfm.adapters.merging.merge_injected_lora` (a shipped model that loads without peft).
    Returns the encoder.
    """
    from peft import inject_adapter_in_model

    encoder = encoder_of(model)
    spec = resolve_spec(spec, encoder)
    inject_adapter_in_model(spec.to_peft_config(modules_to_save=()), encoder, adapter_name=adapter_name)
    for n, p in encoder.named_parameters():
        p.requires_grad_("lora_" in n)
    return encoder
