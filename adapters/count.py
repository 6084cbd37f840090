"""How many weights an adapted model trains, out of how many its forward uses.

Why apart: recipes and benchmarks report this share for every strategy (LoRA, linear probe, full
fine-tuning), on PeftModels and plain models alike.
"""

from __future__ import annotations

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)

__all__ = ["trainable_parameters"]


def trainable_parameters(model: nn.Module) -> dict[str, float]:
    """``{"trainable", "total", "percent"}`` parameters of the model as it runs now.

    For a PeftModel, ``total`` counts what the active adapter's forward uses: the base weights, the
    active LoRA factors and head copy, but not peft's frozen original head or other adapters' copies
    (counting those would flatter the percentage with weights that never run together).
    """
    from peft import PeftModel

    skip: list[str] = []
    if isinstance(model, PeftModel):
        active = model.active_adapter
        skip = [f".{n}." for n in model.peft_config if n != active] + [".original_module."]
    trainable = total = 0
    seen: set[int] = set()
    for pname, p in model.named_parameters():
        if id(p) in seen or any(s in f".{pname}." for s in skip):
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"trainable": int(trainable), "total": int(total),
            "percent": float(100.0 * trainable / total) if total else 0.0}
