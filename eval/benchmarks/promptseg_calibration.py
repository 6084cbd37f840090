"""Calibration figures of ``radfm bench promptseg``: predicted IoU / expected Dice against real Dice.

Two views: how the calibration the model shipped with reads click 1 on the real objects
(:func:`click1_calibration`), and a map refitted on those objects, scored leave-one-object-out
(:func:`real_calibration`, which ``--write-calibration`` ships).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["click1_calibration", "real_calibration"]


def click1_calibration(pairs: list[tuple[tuple[float, float, float | None], float]],
                       calibration: Any | None) -> dict[str, Any]:
    """Reliability of click 1: ``pairs`` = ((predicted IoU, stability, expected Dice), real Dice) per object.

    ``calibration`` is the predictor's loaded calibration (or ``None``); its signal and stability
    offset say which quality signals are ranked against the real Dice.
    """
    from radfm.tasks.segmentation.calibration import quality_signal, reliability

    scores = np.array([s[0] for s, _ in pairs])
    stabs = np.array([s[1] for s, _ in pairs])
    expected = [s[2] for s, _ in pairs]
    dices = np.array([d for _, d in pairs])
    cal = calibration
    offset = (cal.stability_offset if cal is not None else None) or 1.0  # what the predictor measured

    def rho(a: np.ndarray) -> float | None:
        if len(a) < 3 or np.std(a) == 0:
            return None
        return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(dices)))[0, 1])

    return {"reliability_raw": reliability(scores, dices, n_bins=3),
            "mae_raw": float(np.mean(np.abs(scores - dices))),
            "signal": cal.signal if cal is not None else None,
            "mae_calibrated": float(np.mean(np.abs(np.array(expected, float) - dices)))
            if cal is not None and None not in expected else None,
            "spearman": rho(scores),
            "spearman_by_signal": {k: rho(np.asarray(quality_signal(k, scores, stabs), float))
                                   for k in ("iou", f"stability@{offset:g}", f"iou_x_stability@{offset:g}")}}


def real_calibration(pairs: list[tuple[int, float, float, float]], *, out_dir: Path | None, write: bool) -> dict[str, Any]:
    """Fit the quality → expected-Dice map on real held-out objects, scored leave-one-object-out.

    Every click of every object is one (quality, stability, Dice) sample. For each object the map is
    fitted on the other objects' samples and applied to its own: Spearman of expected vs real Dice,
    mean |expected − real|, and how often ``low_confidence`` (expected < 0.5) is right, against the
    best constant answer. With ``write`` the map fitted on all objects goes to ``calibration.json``.
    """
    from radfm.tasks.segmentation.calibration import fit_best_calibration, quality_signal
    from radfm.tasks.segmentation.loading import CALIBRATION_FILENAME, default_model_dir

    obj = np.array([p[0] for p in pairs])
    q = np.array([p[1] for p in pairs], float)
    st = np.array([p[2] for p in pairs], float)
    dice = np.array([p[3] for p in pairs], float)
    kinds = ("iou", "stability@1", "iou_x_stability@1")
    sig = {k: np.asarray(quality_signal(k, q, st), float) for k in kinds}
    expected = np.zeros_like(dice)
    for o in np.unique(obj):
        tr = obj != o
        cal = fit_best_calibration({k: v[tr] for k, v in sig.items()}, dice[tr])
        expected[~tr] = cal.expected_dice(sig[cal.signal][~tr])
    low_true = dice < 0.5
    flag_acc = float(np.mean((expected < 0.5) == low_true))
    const_acc = float(max(low_true.mean(), 1 - low_true.mean()))
    ra, rb = np.argsort(np.argsort(expected)), np.argsort(np.argsort(dice))
    out = {"n_samples": len(dice), "n_objects": len(np.unique(obj)),
           "loo_spearman": float(np.corrcoef(ra, rb)[0, 1]) if np.std(expected) > 0 else None,
           "loo_mae": float(np.mean(np.abs(expected - dice))), "loo_low_confidence_accuracy": flag_acc,
           "constant_accuracy": const_acc}
    if write:
        full = fit_best_calibration(sig, dice, note=f"{len(dice)} clicks on {out['n_objects']} REAL held-out objects "
                                    "(radfm bench promptseg); leave-one-object-out figures in stats")
        full.stats.update({f"loo_{k}": v for k, v in out.items() if k.startswith("loo_")})
        full.save(Path(out_dir or default_model_dir()) / CALIBRATION_FILENAME)
        out["signal"] = full.signal
    return out
