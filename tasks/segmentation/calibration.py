"""From the model's predicted IoU to an expected Dice: isotonic calibration, reliability, low-confidence flag.

Why: SAM's IoU head is trained on the training distribution; on new anatomy or a new scanner it is
usually over-confident. A monotone map fitted on held-out cases (predicted IoU → mean real Dice)
keeps the ranking of the model's own score but states it on the scale a reader cares about, and a
threshold on it flags masks that deserve another click. Saved as ``calibration.json`` next to the
weights; the predictor applies it automatically.

Fitting is pool-adjacent-violators isotonic regression (non-decreasing, weighted), stored as
breakpoints and interpolated linearly; reliability is reported in equal-count bins.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radfm.errors import ConfigError, InputError

__all__ = ["Calibration", "fit_calibration", "isotonic_fit", "reliability"]


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators).

    Returns breakpoints ``(xs, ys)`` (ties in ``x`` merged) to interpolate between.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ux, inv = np.unique(xs, return_inverse=True)
    w = np.bincount(inv).astype(float)
    v = np.bincount(inv, weights=ys) / w
    blocks: list[list[float]] = []  # [value, weight, n_points]
    for vi, wi in zip(v, w):
        blocks.append([vi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            b = blocks.pop()
            a = blocks[-1]
            tot = a[1] + b[1]
            blocks[-1] = [(a[0] * a[1] + b[0] * b[1]) / tot, tot, a[2] + b[2]]
    fitted = np.concatenate([[blk[0]] * int(blk[2]) for blk in blocks])
    return ux, fitted


def reliability(score: np.ndarray, dice: np.ndarray, n_bins: int = 5) -> list[dict[str, float]]:
    """Equal-count bins of the score: mean predicted score, mean real Dice, count per bin."""
    order = np.argsort(score, kind="stable")
    rows = []
    for chunk in np.array_split(order, min(n_bins, max(len(order), 1))):
        if chunk.size == 0:
            continue
        rows.append({"score_lo": float(score[chunk].min()), "score_hi": float(score[chunk].max()),
                     "mean_score": float(score[chunk].mean()), "mean_dice": float(dice[chunk].mean()),
                     "n": int(chunk.size)})
    return rows


@dataclass
class Calibration:
    """Monotone map predicted IoU → expected Dice, with a low-confidence threshold.

    Attributes:
        xs, ys: isotonic breakpoints (score, expected Dice); outside them the end values hold.
        threshold: expected Dice below which a mask is flagged ``low_confidence``.
        n: number of held-out objects it was fitted on.
        reliability: equal-count bins before calibration (see :func:`reliability`).
        stats: summary numbers (mean |score − Dice| before/after, Spearman rank correlation).
    """

    xs: list[float]
    ys: list[float]
    threshold: float = 0.5
    n: int = 0
    reliability: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def expected_dice(self, score: float | np.ndarray) -> float | np.ndarray:
        """Expected Dice of a mask whose predicted IoU is ``score``."""
        out = np.interp(np.asarray(score, float), self.xs, self.ys)
        return float(out) if np.ndim(out) == 0 else out

    def is_low_confidence(self, score: float) -> bool:
        """True when the expected Dice for ``score`` is below ``threshold``."""
        return bool(self.expected_dice(score) < self.threshold)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"format": "radfm-iou-calibration", "version": 1, **asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the calibration file {path}: {exc}.") from exc
        if data.get("format") != "radfm-iou-calibration":
            raise ConfigError(f"{path} is not a radfm IoU calibration file.")
        fields = {k: data[k] for k in ("xs", "ys", "threshold", "n", "reliability", "stats", "note") if k in data}
        return cls(**fields)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_calibration(score: Any, dice: Any, *, threshold: float = 0.5, n_bins: int = 5,
                    note: str = "") -> Calibration:
    """Fit the isotonic map on held-out ``(predicted IoU, real Dice)`` pairs (1D arrays, same length)."""
    s, d = np.asarray(score, float).ravel(), np.asarray(dice, float).ravel()
    if s.shape != d.shape or s.size < 2:
        raise InputError(f"calibration needs at least two (score, Dice) pairs of equal length, got {s.size} and {d.size}.")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(d))):
        raise InputError("calibration scores and Dice values must be finite.")
    xs, ys = isotonic_fit(s, d)
    fitted = np.interp(s, xs, ys)
    stats = {"mae_raw": float(np.mean(np.abs(s - d))), "mae_calibrated": float(np.mean(np.abs(fitted - d))),
             "spearman": _spearman(s, d), "mean_score": float(s.mean()), "mean_dice": float(d.mean())}
    return Calibration(xs=xs.tolist(), ys=ys.tolist(), threshold=float(threshold), n=int(s.size),
                       reliability=reliability(s, d, n_bins), stats=stats, note=note)
