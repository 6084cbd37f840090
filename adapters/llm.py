"""LoRA on a causal LLM (the report task's language side), in the peft CAUSAL_LM layout vLLM serves.

Why here and not in the report task: every adapter of the platform goes through ``radfm.adapters``
(one attach, one save-apart layout with ``radfm_adapter.json``, one merge for export). An LLM
adapter has no base encoder to fingerprint, so its record names the base LLM instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.adapters.registry import adapter_meta, registry, require_adapter, require_peft
from radfm.adapters.spec import LoraSpec
from radfm.errors import ConfigError

__all__ = ["attach_llm_lora", "merge_llm_lora", "save_llm_adapter"]


def attach_llm_lora(lm: nn.Module, spec: LoraSpec, *, adapter_name: str = "default") -> Any:
    """Wrap ``lm`` with peft LoRA on those of ``spec.targets`` it has (leaf names); only LoRA trains.

    Raises ConfigError when none of the targets exists (a Llama name list on a GPT-2, say).
    """
    from peft import get_peft_model

    leaves = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    targets = tuple(t for t in spec.targets if t in leaves)
    if not targets:
        raise ConfigError(f"none of the LoRA targets {list(spec.targets)} exists in this LLM.",
                          "Set lora.target_modules to the LLM's linear layer names.")
    spec = LoraSpec(r=spec.r, alpha=spec.alpha, dropout=spec.dropout, targets=targets)
    peft_model = get_peft_model(lm, spec.to_peft_config(modules_to_save=(), task_type="CAUSAL_LM"),
                                adapter_name=adapter_name)
    registry(peft_model).meta[adapter_name] = {"lora": spec.to_dict(), "modules_to_save": []}
    return peft_model


def save_llm_adapter(peft_lm: Any, directory: str | Path, *, task: str = "report",
                     adapter_name: str = "default") -> Path:
    """Write the LLM's LoRA apart (peft layout, loadable by ``radfm serve --adapter`` and vLLM)."""
    from radfm.adapters.io import write_adapter_record, write_peft_files

    peft_lm = require_peft(peft_lm)
    require_adapter(peft_lm, adapter_name)
    out = write_peft_files(peft_lm, adapter_name, directory)
    base = peft_lm.get_base_model()
    record = {"format": "radfm-adapter", "version": 1, "task": task, "name": adapter_name,
              "lora": adapter_meta(peft_lm, adapter_name).get("lora"), "modules_to_save": [],
              "base_llm": {"path": getattr(base, "name_or_path", None) or None,
                           "model_type": getattr(base.config, "model_type", None)}}
    write_adapter_record(out, record)
    return out


def merge_llm_lora(lm: nn.Module) -> nn.Module:
    """``lm`` with its LoRA folded in (export: one self-contained LLM); a plain LLM is returned as is."""
    return lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm
