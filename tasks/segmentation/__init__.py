"""Prompt-based 3D segmentation (clicks, boxes, previous masks, class names) on the shared CNN encoder.

One concern per file: ``prompts`` (clicks, box and previous mask as dense maps), ``model`` (the
shared encoder + the prompt-fused U-shaped decoder + quality head; save/load), ``predictor``
(cache the window embedding once, answer many prompts given in file voxels or world mm),
``data`` (real labels, pseudo-masks, inserted shapes, phantoms; the subject-disjoint split),
``cases`` (cases on the model grid), ``sampling`` (one training sample and its first prompt),
``interaction`` (the click protocol shared by training, tests and benchmarks), ``train``
(simulated interaction on accelerate, ``radfm train segmentation``), ``evaluate`` (held-out
clicking and the click-ball baseline),
``calibration`` (quality score → expected Dice), ``dicom_seg`` (DICOM SEG output), ``cli``
(``radfm segment``) and ``demo``. Names are imported lazily so ``radfm --help`` does not load torch.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.tasks.segmentation.model": ["RadFMSegConfig", "RadFMPromptSegmenter"],
    "radfm.tasks.segmentation.predictor": ["SegPredictor"],
    "radfm.tasks.segmentation.results": ["SegResult"],
    "radfm.tasks.segmentation.loading": ["load_segmenter", "default_model_dir"],
    "radfm.tasks.segmentation.files": ["segment_file"],
    "radfm.tasks.segmentation.train": ["TrainConfig", "train"],
    "radfm.tasks.segmentation.calibration": ["Calibration"],
    "radfm.tasks.segmentation.dicom_seg": ["write_dicom_seg"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
