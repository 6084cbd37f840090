"""What a prediction returns (``SegResult``) and the prompts as the predictor holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from radfm.errors import InputError

__all__ = ["Prompts", "SegResult"]


@dataclass
class SegResult:
    """One prediction, mapped back onto the volume's canonical grid.

    Attributes:
        mask: ``(X, Y, Z)`` uint8 canonical mask (1 = object) on the volume's grid.
        score: the quality head's predicted Dice of the mask (the model's own confidence, 0–1).
        candidate_scores: ``(M,)`` predicted IoU of every candidate.
        best_index: index of the chosen candidate.
        low_res_logits: ``(1, 1, d, h, w)`` logits of the mask on its window (model grid), to pass
            back as ``mask_input`` in the next round (``None`` after a sliding window).
        stability: stability score of the chosen mask at the calibration's logit offset
            (see ``calibration.stability_score``).
        expected_dice: calibrated expected Dice from ``score`` / ``stability`` (``None`` without calibration).
        low_confidence: ``expected_dice`` below the calibration's threshold.
        window: model-input window ``((z0, z1), (y0, y1), (x0, x1))`` the logits belong to.
        spacing: the model grid (mm) the mask was predicted on; passing this result back as
            ``mask_input`` refines on the same grid.
        scale_scores: with several inference spacings, the border contrast of each spacing's
            candidate (``scale_choice.boundary_contrast``), by spacing.
    """

    mask: np.ndarray
    score: float
    candidate_scores: np.ndarray
    best_index: int
    low_res_logits: torch.Tensor | None
    expected_dice: float | None = None
    low_confidence: bool = False
    stability: float | None = None
    window: tuple[tuple[int, int], ...] | None = None
    spacing: tuple[float, float, float] | None = None
    scale_scores: dict[float, float] | None = None
    _candidate_logits: torch.Tensor | None = field(default=None, repr=False)
    _to_canonical: Any = field(default=None, repr=False)

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_scores.shape[0])

    def candidate(self, index: int) -> np.ndarray:
        """``(X, Y, Z)`` uint8 canonical mask of candidate ``index`` (computed on demand: memory)."""
        if self._candidate_logits is None:
            if index == self.best_index:
                return self.mask
            raise InputError("this result kept only its chosen mask (sliding-window box).")
        return self._to_canonical(self._candidate_logits[index])

    @property
    def candidates(self) -> list[np.ndarray]:
        """All candidate masks, canonical ``(X, Y, Z)`` uint8 each."""
        return [self.candidate(i) for i in range(self.num_candidates)]


@dataclass
class Prompts:
    """Prompts converted to continuous model-input voxel coordinates (z, y, x), whole resampled grid."""

    points: np.ndarray | None  # (N, 3)
    labels: np.ndarray | None  # (N,)
    box: np.ndarray | None  # (6,) inclusive (z0, y0, x0, z1, y1, x1)
    class_id: int = -1

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        pts = [p for p in (self.points, None if self.box is None else self.box.reshape(2, 3)) if p is not None]
        allp = np.concatenate(pts, axis=0)
        return allp.min(axis=0), allp.max(axis=0)
