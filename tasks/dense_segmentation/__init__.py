"""Few-shot dense (automatic) segmentation: the shared encoder + an FPN-lite head, adapted from K cases.

One concern per file: ``model`` (the head, its config, the encoder + head model, ViT or CNN
encoder), ``data`` (collect labelled cases, label ids → classes, the input plan, cases on the model
grid), ``strategy`` (linear / lora / full / auto by K, and the model each builds), ``train`` (the
loop: patches, augmentation, Dice + CE, schedule), ``inference`` (sliding windows, labels back on
the input's grid, the ``radfm.segmenters`` entry), ``checkpoint`` (encoder in, adapter folder out
and back), ``api`` (``adapt``) and ``cli`` (``radfm adapt``). LoRA itself lives in
``radfm.adapters``. Names are imported lazily so ``radfm --help`` does not load torch.
"""

from __future__ import annotations

from radfm._lazy import lazy_getattr

_EXPORTS = {
    "RadFMDenseSegmentationConfig": "radfm.tasks.dense_segmentation.model",
    "RadFMForDenseSegmentation": "radfm.tasks.dense_segmentation.model",
    "AdaptResult": "radfm.tasks.dense_segmentation.api",
    "adapt": "radfm.tasks.dense_segmentation.api",
    "AugmentConfig": "radfm.tasks.dense_segmentation.train",
    "TrainConfig": "radfm.tasks.dense_segmentation.train",
    "fit": "radfm.tasks.dense_segmentation.train",
    "choose_strategy": "radfm.tasks.dense_segmentation.strategy",
    "build_model": "radfm.tasks.dense_segmentation.strategy",
    "load_adapted": "radfm.tasks.dense_segmentation.checkpoint",
    "load_encoder": "radfm.tasks.dense_segmentation.checkpoint",
    "predict_volume": "radfm.tasks.dense_segmentation.inference",
    "segment_volume": "radfm.tasks.dense_segmentation.inference",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
