"""Parameter-efficient adaptation of the shared encoder (LoRA via peft), for every task.

- ``radfm.adapters.lora``: attach / add / save / load / switch / merge LoRA adapters on a task
  model with a per-adapter head (a ``HeadedTaskModel`` such as the dense segmentation model, the
  head in ``modules_to_save``), and count trainable weights; encoder-only adapters for any task
  model that ships its own head (``attach_encoder_lora``, ``save_encoder_adapter``,
  ``load_encoder_adapter``: prompt segmentation, registration, report).

Few-shot dense segmentation (``adapt``, ``radfm adapt``) is a task: ``radfm.tasks.dense_segmentation``.
Names are imported lazily: peft loads only when an adapter function is used.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.adapters.lora": ["LoraSpec", "attach_lora", "add_adapter", "save_adapter", "load_adapters", "use_adapter", "merge", "trainable_parameters", "encoder_sha256", "attach_encoder_lora", "save_encoder_adapter", "load_encoder_adapter", "read_adapter_meta", "HeadedTaskModel"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
