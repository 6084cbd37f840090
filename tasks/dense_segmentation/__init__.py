"""Few-shot dense (automatic) segmentation: the shared encoder + an FPN-lite head, adapted from K cases.

One concern per file: ``model`` (the head, its config, the encoder + head model, ViT or CNN
encoder), ``data`` (collect labelled cases, label ids → classes, the input plan, cases on the model
grid), ``strategy`` (linear / lora / full / auto by K, and the model each builds), ``train`` (the
loop: patches, augmentation, Dice + CE, schedule), ``inference`` (sliding windows, labels back on
the input's grid, the ``radfm.segmenters`` entry), ``checkpoint`` (encoder in, adapter folder out
and back), ``api`` (``adapt``), ``cli`` (``radfm adapt``), ``pool`` (many adapters on one encoder,
switched per request) and ``routes`` (``/v1/adapters``). LoRA itself lives in
``radfm.adapters``. Names are imported lazily so ``radfm --help`` does not load torch.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.tasks.dense_segmentation.model": ["RadFMDenseSegmentationConfig", "RadFMForDenseSegmentation"],
    "radfm.tasks.dense_segmentation.api": ["AdaptResult", "adapt"],
    "radfm.tasks.dense_segmentation.train": ["AugmentConfig", "TrainConfig", "fit"],
    "radfm.tasks.dense_segmentation.strategy": ["choose_strategy", "build_model"],
    "radfm.tasks.dense_segmentation.checkpoint": ["load_adapted", "load_encoder"],
    "radfm.tasks.dense_segmentation.inference": ["predict_volume", "segment_volume"],
    "radfm.tasks.dense_segmentation.pool": ["AdapterPool"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
