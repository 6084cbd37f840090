"""Parameter-efficient adaptation of the shared encoder (LoRA via peft), for every task.

- ``radfm.adapters.spec``: ``LoraSpec``, what to adapt and how much;
- ``radfm.adapters.heads``: attach / add / switch adapters on a task model with a per-adapter head
  (a ``HeadedTaskModel`` such as the dense segmentation model, the head in ``modules_to_save``);
- ``radfm.adapters.encoder``: encoder-only adapters for any task model that ships its own head
  (prompt segmentation, registration, report);
- ``radfm.adapters.io``: save apart / read / load both kinds; ``radfm.adapters.base_encoder``: the
  encoder SHA-256 every load checks; ``radfm.adapters.merging``: export; ``radfm.adapters.count``:
  trainable weights; ``radfm.adapters.llm``: LoRA on the report LLM. ``radfm.adapters.lora``
  re-exports all of them.

Few-shot dense segmentation (``adapt``, ``radfm adapt``) is a task: ``radfm.tasks.dense_segmentation``.
Names are imported lazily: peft loads only when an adapter function is used.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.adapters.spec": ["LoraSpec"],
    "radfm.adapters.heads": ["HeadedTaskModel", "attach_lora", "add_adapter", "use_adapter"],
    "radfm.adapters.encoder": ["attach_encoder_lora"],
    "radfm.adapters.io": ["save_adapter", "load_adapters", "save_encoder_adapter", "load_encoder_adapter",
                          "read_adapter_meta", "adapter_record", "write_adapter_record"],
    "radfm.adapters.llm": ["attach_llm_lora", "save_llm_adapter", "merge_llm_lora"],
    "radfm.adapters.base_encoder": ["encoder_sha256"],
    "radfm.adapters.merging": ["merge"],
    "radfm.adapters.count": ["trainable_parameters"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
