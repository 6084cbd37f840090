"""LoRA adapters (peft) on the shared encoder: the names of ``radfm.adapters.lora``, kept in one place.

Why a re-export: tasks, benchmarks and tests import from here; the code lives in small modules,
each with one job:

- :mod:`radfm.adapters.spec`: :class:`LoraSpec` (what to adapt, how much) and the target names;
- :mod:`radfm.adapters.heads`: adapters with a per-adapter task head on any :class:`HeadedTaskModel`
  (attach, add, switch);
- :mod:`radfm.adapters.encoder`: encoder-only adapters for task models that ship their own head;
- :mod:`radfm.adapters.io`: save apart / read / load (peft layout + ``radfm_adapter.json``);
- :mod:`radfm.adapters.base_encoder`: the encoder's SHA-256 and the one check that refuses an
  adapter on another encoder;
- :mod:`radfm.adapters.merging`: folding adapters into plain layers (export, peft-free inference);
- :mod:`radfm.adapters.llm`: LoRA on the report LLM (CAUSAL_LM layout, saved apart, merged for export);
- :mod:`radfm.adapters.count`: trainable-parameter counts;
- :mod:`radfm.adapters.registry`: radfm's facts about the adapters of a PeftModel.

Why peft and not our own LoRA: peft already covers ``Linear`` and ``Conv3d``, keeps a per-adapter
copy of the task head (``modules_to_save``), switches adapters in place and merges them for export,
and its on-disk layout is what the wider tooling (vLLM, the hub) reads.
"""

from __future__ import annotations

from radfm.adapters.base_encoder import encoder_sha256
from radfm.adapters.count import trainable_parameters
from radfm.adapters.encoder import attach_encoder_lora, inject_encoder_lora
from radfm.adapters.heads import HeadedTaskModel, add_adapter, attach_lora, use_adapter
from radfm.adapters.io import (
    ADAPTER_CONFIG,
    ADAPTER_META_FILENAME,
    ADAPTER_WEIGHTS,
    adapter_record,
    load_adapters,
    load_encoder_adapter,
    read_adapter_meta,
    save_adapter,
    save_encoder_adapter,
    write_adapter_record,
)
from radfm.adapters.llm import attach_llm_lora, merge_llm_lora, save_llm_adapter
from radfm.adapters.merging import merge, merge_injected_lora
from radfm.adapters.registry import adapter_meta
from radfm.adapters.spec import DEFAULT_TARGETS, PYRAMID_TARGETS, LoraSpec, cnn_lora_targets, resolve_spec

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_META_FILENAME",
    "ADAPTER_WEIGHTS",
    "DEFAULT_TARGETS",
    "PYRAMID_TARGETS",
    "HeadedTaskModel",
    "LoraSpec",
    "adapter_meta",
    "adapter_record",
    "add_adapter",
    "attach_encoder_lora",
    "attach_llm_lora",
    "attach_lora",
    "cnn_lora_targets",
    "encoder_sha256",
    "inject_encoder_lora",
    "load_adapters",
    "load_encoder_adapter",
    "merge",
    "merge_injected_lora",
    "merge_llm_lora",
    "read_adapter_meta",
    "resolve_spec",
    "save_adapter",
    "save_encoder_adapter",
    "save_llm_adapter",
    "trainable_parameters",
    "use_adapter",
    "write_adapter_record",
]
