"""The preprocessing plan: how a model wants its input, saved next to its weights.

Why a plan file: a checkpoint that does not say which spacing, window and normalisation it
was trained with will be fed the wrong input sooner or later (nnU-Net's lesson). The plan is
a small dataclass written as ``preprocess_plan.json`` beside the weights; ``apply_plan`` is
the only function that turns a ``Volume`` into model input, and ``restore_to_input`` the only
one that maps model output back onto the volume's canonical grid (then ``radfm.io.save_like``
writes it in the file's own space). Every coordinate map of a prepared input lives in its
``geometry`` (``radfm.preprocess.geometry.PreparedGeometry``).

Model input order is ``(C, D, H, W)`` = canonical ``(Z, Y, X)`` (see
``radfm.preprocess.geometry.canonical_to_model``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from radfm.config import from_dict, to_dict
from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.preprocess.geometry import PreparedGeometry, canonical_to_model

PLAN_FILENAME = "preprocess_plan.json"


@dataclass
class PreprocessPlan:
    """Input recipe of a model.

    Attributes:
        modality: what the model was trained on ("CT", "MR" or "any").
        target_spacing: voxel size in mm along canonical (X, Y, Z); ``None`` keeps the input's.
        normalization: "ct_window" clips HU to ``ct_window`` and scales it to [-1, 1];
            "zscore" subtracts the mean and divides by the std of voxels above the
            ``foreground_percentile`` (MR: arbitrary units, body only); "percentile" maps
            the p0.5..p99.5 range to [-1, 1] (any modality); "auto" gives CT (declared, from the
            header or detected) :func:`ct_soft_tissue` and any other modality "percentile" — one
            model for both, without a p0.5..p99.5 map squeezing the 10–20 HU between abdominal
            organs into ~1 % of the range (below the noise a model sees in training).
        ct_window: (low, high) HU for "ct_window".
        foreground_percentile: voxels above this percentile define the body for "zscore".
        patch_size: model patch in (D, H, W) voxels after resampling; inputs are padded to a
            multiple of ``pad_multiple`` (the encoder's patch size) before inference.
        pad_multiple: (D, H, W) multiple the model needs (its token patch size).
    """

    modality: str = "any"
    target_spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    normalization: Literal["ct_window", "zscore", "percentile", "auto"] = "percentile"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    foreground_percentile: float = 20.0
    patch_size: tuple[int, int, int] = (64, 64, 64)
    pad_multiple: tuple[int, int, int] = (8, 8, 8)
    version: int = 1
    notes: dict[str, str] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PLAN_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_dict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PreprocessPlan:
        path = Path(directory) / PLAN_FILENAME
        if not path.is_file():
            raise ConfigError(
                f"{directory} has no {PLAN_FILENAME}.",
                "A radfm model directory must carry the plan it was trained with; re-save the model "
                "with radfm, or write the plan with PreprocessPlan(...).save(dir).",
            )
        return from_dict(cls, json.loads(path.read_text()))


@dataclass(frozen=True, eq=False)
class PreparedInput:
    """Model input and its geometry (every map back to the volume and the file).

    Attributes:
        tensor: ``(C, D, H, W)`` float32, normalised, resampled, padded to ``pad_multiple``.
        geometry: stored / world / canonical / model-grid maps (:class:`PreparedGeometry`).
        spacing_dhw: voxel size in mm of the tensor along (D, H, W).
    """

    tensor: torch.Tensor
    geometry: PreparedGeometry
    spacing_dhw: tuple[float, float, float]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the volume's canonical array (X, Y, Z)."""
        return self.geometry.canonical_shape

    @property
    def resampled_shape(self) -> tuple[int, int, int]:
        """(D, H, W) after resampling, before padding."""
        return self.geometry.resampled_shape

    @property
    def pad(self) -> tuple[int, int, int]:
        """(D, H, W) voxels of padding added at the end of each axis."""
        return self.geometry.pad

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """Crop the trailing padding from ``(..., D, H, W)``."""
        d, h, w = self.resampled_shape
        return x[..., :d, :h, :w]


#: Centre and scale (HU) of :func:`ct_soft_tissue`: a radiologist's soft-tissue window (L 40, W 400).
CT_SOFT_CENTRE_HU, CT_SOFT_SCALE_HU = 40.0, 200.0


def ct_soft_tissue(hu: np.ndarray) -> np.ndarray:
    """HU → (-1, 1) by ``tanh((HU - 40) / 200)``: steep over soft tissue, every HU value kept in order.

    Liver (~60 HU) and spleen (~45 HU) are 0.07 apart, fat (-100) sits at -0.6, lung and air near -1,
    enhanced vessels (200) at 0.66 and bone towards 1: a soft-tissue window that does not clip.
    """
    return np.tanh((hu.astype(np.float32, copy=False) - CT_SOFT_CENTRE_HU) / CT_SOFT_SCALE_HU)


def normalize_intensity(array: np.ndarray, plan: PreprocessPlan, modality: str = "unknown") -> np.ndarray:
    """Map raw intensities (HU for CT) to the model's range; ``array`` is (X, Y, Z[, C])."""
    a = array.astype(np.float32, copy=False)
    if plan.normalization == "auto" and modality == "CT":
        return ct_soft_tissue(a)
    if plan.normalization == "ct_window":
        lo, hi = plan.ct_window
        return (np.clip(a, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    chans = a[..., None] if a.ndim == 3 else a
    out = np.empty_like(chans)
    for c in range(chans.shape[-1]):
        x = chans[..., c]
        if plan.normalization == "zscore":
            body = x[x > np.percentile(x, plan.foreground_percentile)]
            body = body if body.size > 16 else x.ravel()
            out[..., c] = (x - body.mean()) / max(float(body.std()), 1e-6)
        else:
            lo, hi = np.percentile(x, [0.5, 99.5])
            out[..., c] = (np.clip(x, lo, hi) - lo) / max(float(hi - lo), 1e-6) * 2.0 - 1.0
    return out[..., 0] if a.ndim == 3 else out


def apply_plan(volume: Volume, plan: PreprocessPlan) -> PreparedInput:
    """Volume (canonical) → model tensor ``(C, D, H, W)`` following ``plan``."""
    if plan.modality not in ("any", volume.modality) and volume.modality != "unknown":
        raise InputError(
            f"this model was trained on {plan.modality} but the image is {volume.modality}.",
            "Use a model for this modality, or declare the modality if it was detected wrongly.",
        )
    norm = normalize_intensity(volume.array, plan, volume.modality)
    chans = norm[..., None] if norm.ndim == 3 else norm
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(chans)))  # (C, D, H, W)
    spacing_dhw = tuple(reversed(volume.spacing))
    if plan.target_spacing is not None:
        target_dhw = tuple(reversed(plan.target_spacing))
        size = tuple(max(1, round(n * s / t_)) for n, s, t_ in zip(t.shape[1:], spacing_dhw, target_dhw))
        if size != tuple(t.shape[1:]):
            t = F.interpolate(t[None], size=size, mode="trilinear", align_corners=False)[0]
        spacing_dhw = tuple(n * s / m for n, s, m in zip(norm.shape[:3][::-1], spacing_dhw, size))
    resampled = tuple(int(n) for n in t.shape[1:])
    pad = tuple((-n) % m for n, m in zip(resampled, plan.pad_multiple))
    if any(pad):
        t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    t = t.contiguous().float()
    geometry = PreparedGeometry.of(volume, resampled, tuple(int(n) for n in t.shape[1:]))
    return PreparedInput(tensor=t, geometry=geometry, spacing_dhw=spacing_dhw)


def restore_to_input(output: torch.Tensor, prepared: PreparedInput, *, kind: Literal["label", "continuous"]) -> np.ndarray:
    """Model output ``(K, D, H, W)`` (padded grid) → canonical array on the volume's grid.

    The same map as ``PreparedGeometry.to_canonical`` on the whole grid: ``kind="label"``:
    ``output`` holds per-class scores/logits/probabilities (K ≥ 2) or one foreground logit (K = 1);
    they are resampled linearly and then argmax'd / thresholded at 0, which is smoother than
    resampling the hard labels. ``kind="continuous"``: images or fields, resampled linearly,
    returned as (X, Y, Z, K) or (X, Y, Z) when K = 1.
    """
    return prepared.geometry.to_canonical(output, kind=kind)
