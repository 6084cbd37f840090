"""Helpers of the segmentation tests: tiny random models and small volumes (unique module name)."""

from __future__ import annotations

import numpy as np
import torch

import radfm  # noqa: F401  (torchvision shim before segment_anything)
from radfm.io.volume import Volume
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.segmentation.model import RadFMPromptSegmenter


def tiny_model(*, window: int = 32, seed: int = 0, class_names: tuple[str, ...] = ("liver",),
               spacing: float | None = 2.0) -> RadFMPromptSegmenter:
    """Random tiny segmenter (a 4-stage CNN, stride 8), with a plan at ``spacing`` mm."""
    torch.manual_seed(seed)
    enc = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny", cnn_channels=(8, 12, 16, 24),
                                                      cnn_blocks=(1, 1, 1, 1)))
    model = RadFMPromptSegmenter.from_encoder(enc, window_size=[window] * 3, class_names=list(class_names))
    model.preprocess_plan = PreprocessPlan(target_spacing=None if spacing is None else (spacing,) * 3,
                                           normalization="percentile", pad_multiple=(8,) * 3)
    return model.eval()


def blob_volume(shape: tuple[int, int, int] = (30, 28, 26), spacing: float = 2.0, seed: int = 0) -> Volume:
    """An in-memory CT-like volume with a bright ellipsoid (HU) and noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    inside = ((grid / (np.array(shape)[:, None, None, None] / 4)) ** 2).sum(0) < 1
    arr = np.where(inside, 60.0, -80.0) + rng.normal(0, 10, shape)
    return Volume(array=arr.astype(np.float32), affine=np.diag([spacing] * 3 + [1.0]), modality="CT")
