"""Parameter-efficient adaptation of the shared encoder (LoRA via peft) and few-shot fitting.

- ``radfm.adapters.lora``: attach / add / save / load / switch / merge LoRA adapters on a
  ``RadFMForDenseSegmentation`` (the head in ``modules_to_save``), and count trainable weights;
  encoder-only adapters for any task model that ships its own head (``attach_encoder_lora``,
  ``save_encoder_adapter``, ``load_encoder_adapter``: prompt segmentation, registration, report).
- ``radfm.adapters.fewshot``: ``adapt(...)`` from K labelled cases (strategies linear / lora / full /
  auto), ``load_adapted`` and ``predict_volume``.
- ``radfm.adapters.cli``: ``radfm adapt TASK --data DIR --shots K``.

Names are imported lazily: peft and MONAI load only when an adapter function is used.
"""

from __future__ import annotations

from radfm._lazy import lazy_getattr

_EXPORTS = {
    "LoraSpec": "radfm.adapters.lora",
    "attach_lora": "radfm.adapters.lora",
    "add_adapter": "radfm.adapters.lora",
    "save_adapter": "radfm.adapters.lora",
    "load_adapters": "radfm.adapters.lora",
    "use_adapter": "radfm.adapters.lora",
    "merge": "radfm.adapters.lora",
    "trainable_parameters": "radfm.adapters.lora",
    "encoder_sha256": "radfm.adapters.lora",
    "attach_encoder_lora": "radfm.adapters.lora",
    "save_encoder_adapter": "radfm.adapters.lora",
    "load_encoder_adapter": "radfm.adapters.lora",
    "read_adapter_meta": "radfm.adapters.lora",
    "AdaptResult": "radfm.adapters.fewshot",
    "AugmentConfig": "radfm.adapters.fewshot",
    "TrainConfig": "radfm.adapters.fewshot",
    "adapt": "radfm.adapters.fewshot",
    "choose_strategy": "radfm.adapters.fewshot",
    "fit": "radfm.adapters.fewshot",
    "load_adapted": "radfm.adapters.fewshot",
    "predict_volume": "radfm.adapters.fewshot",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
