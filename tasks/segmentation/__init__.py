"""Prompt-based 3D segmentation (SAM-style clicks, boxes, masks) on the shared encoder.

Parts, one concern per file as in segment-anything: ``prompt_encoder`` (3D random-Fourier
positions, point/box/mask/class prompts), ``mask_decoder`` (SAM's two-way transformer on 3D
tokens, pyramid-fusing upscaling, IoU head), ``model`` (assembly, save/load), ``predictor``
(cache the embedding once, answer many prompts given in file voxels or world mm), ``train``
(simulated interaction), ``calibration`` (predicted IoU → expected Dice), ``dicom_seg``
(DICOM SEG output), ``cli`` (``radfm segment``) and ``demo``. Names are imported lazily so
``radfm --help`` does not load torch.
"""

from __future__ import annotations

from radfm._lazy import lazy_getattr

_EXPORTS = {
    "RadFMSegConfig": "radfm.tasks.segmentation.model",
    "RadFMPromptSegmenter": "radfm.tasks.segmentation.model",
    "SegPredictor": "radfm.tasks.segmentation.predictor",
    "SegResult": "radfm.tasks.segmentation.predictor",
    "load_segmenter": "radfm.tasks.segmentation.predictor",
    "default_model_dir": "radfm.tasks.segmentation.predictor",
    "segment_file": "radfm.tasks.segmentation.predictor",
    "TrainConfig": "radfm.tasks.segmentation.train",
    "train": "radfm.tasks.segmentation.train",
    "Calibration": "radfm.tasks.segmentation.calibration",
    "write_dicom_seg": "radfm.tasks.segmentation.dicom_seg",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
