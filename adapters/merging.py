"""Folding LoRA updates into plain layers (``W + (alpha/r) B A``): for export and peft-free inference.

Why one module: every merge path (a per-head adapter, a loaded encoder adapter, injected layers)
needs the same fix for pointwise Conv3d layers, :func:`patch_pointwise_conv3d_merge`.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.adapters.heads import HeadedTaskModel
from radfm.adapters.registry import REGISTRY_ATTR, adapter_meta, require_adapter, require_peft

__all__ = ["merge", "merge_injected_lora", "patch_pointwise_conv3d_merge"]


def merge(peft_model: Any, name: str) -> HeadedTaskModel:
    """A plain task model (e.g. ``RadFMForDenseSegmentation``) with adapter ``name`` folded in (export).

    LoRA updates are added to their layers (``W + (alpha/r) B A``) and the adapter's head becomes
    ``head``; the config gets the adapter's classes. Works on a deep copy: ``peft_model`` and its
    other adapters are left as they were.
    """
    peft_model = require_peft(peft_model)
    require_adapter(peft_model, name)
    meta = adapter_meta(peft_model, name)
    reg = peft_model.__dict__.pop(REGISTRY_ATTR, None)  # keep the registry out of the copy
    try:
        work = copy.deepcopy(peft_model)
    finally:
        if reg is not None:
            setattr(peft_model, REGISTRY_ATTR, reg)
    work.set_adapter(name, inference_mode=True)
    patch_pointwise_conv3d_merge(work)
    merged = work.merge_and_unload(adapter_names=[name])
    classifier = merged.head.classifier
    k = int(classifier.out_channels)
    names = meta.get("label_names") or {0: "background", **{i: f"class_{i}" for i in range(1, k)}}
    merged.config.num_classes = k
    for f in merged.head_fields:
        if f != "num_classes" and f in meta.get("head", {}):
            setattr(merged.config, f, int(meta["head"][f]))
    merged.config.id2label = {int(i): str(v) for i, v in names.items()}
    merged.config.label2id = {v: i for i, v in merged.config.id2label.items()}
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()


def patch_pointwise_conv3d_merge(peft_model: Any) -> None:
    """Fix peft 0.21's merge of LoRA on 1×1×1 Conv3d layers (on this copy of the model only).

    peft takes any conv whose kernel's first two spatial sizes are 1 for a 1×1 Conv2d and squeezes
    two axes, which fails for a ``(out, in, 1, 1, 1)`` kernel (size mismatch at merge time). The
    delta of a pointwise conv is the plain matrix product ``scaling · B A`` with three unit axes.
    """
    from peft.tuners.lora.layer import Conv3d as LoraConv3d

    def delta(self: Any, adapter: str) -> torch.Tensor:
        a = self.lora_A[adapter].weight.float().flatten(1)  # (r, in)
        b = self.lora_B[adapter].weight.float().flatten(1)  # (out, r)
        out = (b @ a)[:, :, None, None, None] * self.scaling[adapter]
        return out.to(self.lora_A[adapter].weight.dtype)

    for module in peft_model.modules():
        if isinstance(module, LoraConv3d) and tuple(module.get_base_layer().kernel_size) == (1, 1, 1):
            module.get_delta_weight = types.MethodType(delta, module)


def merge_injected_lora(module: nn.Module) -> int:
    """Fold every LoRA layer under ``module`` into its base layer and put the plain layer back.

    Returns how many layers were merged. Pointwise Conv3d layers get the fixed merge of
    :func:`patch_pointwise_conv3d_merge`.
    """
    from peft.tuners.lora import LoraLayer

    patch_pointwise_conv3d_merge(module)
    n = 0
    for name, layer in list(module.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], layer.get_base_layer())
            n += 1
    return n
