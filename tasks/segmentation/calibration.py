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

__all__ = [
    "QUALITY_SIGNALS",
    "STABILITY_OFFSETS",
    "Calibration",
    "fit_best_calibration",
    "fit_calibration",
    "isotonic_fit",
    "quality_signal",
    "reliability",
    "signal_offset",
    "stability_score",
]

#: Logit offsets at which the stability score is measured (the model's logits are not on SAM's scale,
#: so the offset that best separates good from bad masks is chosen on held-out data).
STABILITY_OFFSETS: tuple[float, ...] = (0.25, 0.5, 1.0)

#: Quality signals a calibration can map to an expected Dice: the IoU head's prediction, SAM's
#: stability score at a logit offset (how much the mask changes when the threshold moves by ±offset),
#: or their product. Names: "iou", "stability@0.5", "iou_x_stability@0.5".
QUALITY_SIGNALS: tuple[str, ...] = ("iou", *(f"{kind}@{o:g}" for kind in ("stability", "iou_x_stability")
                                              for o in STABILITY_OFFSETS))


def stability_score(logits: Any, offset: float = 1.0) -> float:
    """SAM's stability score: ``|logits > +offset| / |logits > -offset|`` (1 = a crisp, stable mask).

    Why beside the IoU head: it needs no training, so it stays informative when the IoU head has
    not learned (or has collapsed to the mean) on a new domain. An empty mask scores 0.
    """
    import torch

    lg = torch.as_tensor(logits).float()
    outer = int((lg > -offset).sum())
    return float(int((lg > offset).sum()) / outer) if outer else 0.0


def signal_offset(kind: str) -> float | None:
    """The stability offset a signal name uses (``None`` for "iou")."""
    return float(kind.split("@", 1)[1]) if "@" in kind else None


def quality_signal(kind: str, iou: Any, stability: Any) -> Any:
    """The named signal from the predicted IoU and the stability score at the signal's offset."""
    base = kind.split("@", 1)[0]
    if kind == "iou":
        return iou
    if "@" not in kind or base not in ("stability", "iou_x_stability"):
        raise ConfigError(f"unknown quality signal {kind!r}.", f"Use one of {', '.join(QUALITY_SIGNALS)}.")
    if base == "stability":
        return stability
    return np.asarray(iou, float) * np.asarray(stability, float)


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
    """Monotone map quality signal (predicted IoU by default) → expected Dice, with a low-confidence threshold.

    Attributes:
        signal: which quality signal the map reads (see :data:`QUALITY_SIGNALS`).
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
    signal: str = "iou"

    @property
    def stability_offset(self) -> float | None:
        """Logit offset of the stability score this calibration reads (``None``: IoU only)."""
        return signal_offset(self.signal)

    def signal_of(self, iou: Any, stability: Any) -> Any:
        """This calibration's input value for a mask's predicted IoU and its stability score
        (measured at :attr:`stability_offset`)."""
        return quality_signal(self.signal, iou, stability)

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
        fields = {k: data[k] for k in ("xs", "ys", "threshold", "n", "reliability", "stats", "note", "signal")
                  if k in data}
        try:
            quality_signal(fields.get("signal", "iou"), 0.0, 0.0)
        except ConfigError as exc:
            raise ConfigError(f"{path} names an unknown quality signal {fields['signal']!r}.") from exc
        return cls(**fields)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_calibration(score: Any, dice: Any, *, threshold: float = 0.5, n_bins: int = 5,
                    note: str = "", signal: str = "iou") -> Calibration:
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
                       reliability=reliability(s, d, n_bins), stats=stats, note=note, signal=signal)


def fit_best_calibration(signals: dict[str, Any], dice: Any, **kwargs: Any) -> Calibration:
    """Fit on each candidate signal and keep the one that ranks held-out Dice best (Spearman).

    The Spearman of every candidate is kept in ``stats["spearman_by_signal"]`` so the choice is visible.
    """
    fits = {k: fit_calibration(v, dice, signal=k, **kwargs) for k, v in signals.items()}
    rho = {k: c.stats["spearman"] for k, c in fits.items()}
    best = max(fits, key=lambda k: -np.inf if not np.isfinite(rho[k]) else rho[k])
    out = fits[best]
    out.stats["spearman_by_signal"] = rho
    return out
