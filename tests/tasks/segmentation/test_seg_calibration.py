"""IoU → Dice calibration: isotonic, monotone, saved as JSON, low-confidence flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radfm.errors import InputError
from radfm.tasks.segmentation.calibration import Calibration, fit_calibration, isotonic_fit


def test_isotonic_fit_is_monotone_and_least_squares_on_violators() -> None:
    _, ys = isotonic_fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.6, 0.4, 0.9]))
    np.testing.assert_allclose(ys, [0.2, 0.5, 0.5, 0.9])  # the violating pair is pooled to its mean
    assert np.all(np.diff(ys) >= 0)


def test_calibration_maps_overconfident_scores_and_flags_low_confidence(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0.3, 1.0, 200)
    dice = np.clip(score - 0.2 + rng.normal(0, 0.05, 200), 0, 1)  # the model is over-confident by 0.2
    cal = fit_calibration(score, dice, threshold=0.5)
    assert cal.stats["mae_calibrated"] < cal.stats["mae_raw"]
    assert abs(cal.expected_dice(0.9) - 0.7) < 0.08
    assert cal.is_low_confidence(0.6) and not cal.is_low_confidence(0.95)
    assert sum(r["n"] for r in cal.reliability) == 200
    loaded = Calibration.load(cal.save(tmp_path / "calibration.json"))
    assert loaded.expected_dice(0.9) == pytest.approx(cal.expected_dice(0.9))
    with pytest.raises(InputError):
        fit_calibration([0.5], [0.4])


def test_stability_score_is_one_for_crisp_masks_and_low_for_soft_ones() -> None:
    import torch

    from radfm.tasks.segmentation.calibration import stability_score

    crisp = torch.full((8, 8, 8), -10.0)
    crisp[2:6, 2:6, 2:6] = 10.0
    assert stability_score(crisp) == pytest.approx(1.0)
    soft = torch.linspace(-3, 3, 512).reshape(8, 8, 8)  # a ramp: many voxels near the threshold
    assert stability_score(soft) == pytest.approx(0.5, abs=0.01)  # |x > 1| / |x > -1| = (2/6) / (4/6)
    assert stability_score(torch.full((4, 4, 4), -5.0)) == 0.0  # empty mask


def test_best_signal_is_the_one_that_ranks_dice(tmp_path: Path) -> None:
    """A collapsed IoU head (constant ± noise) loses to a stability score that tracks Dice."""
    from radfm.tasks.segmentation.calibration import fit_best_calibration, quality_signal

    rng = np.random.default_rng(1)
    dice = rng.uniform(0, 1, 120)
    iou = 0.18 + rng.normal(0, 0.005, 120)
    stab = np.clip(dice + rng.normal(0, 0.1, 120), 0, 1)
    signals = {k: quality_signal(k, iou, stab) for k in ("iou", "stability@0.5", "iou_x_stability@0.5")}
    cal = fit_best_calibration(signals, dice)
    assert cal.signal in ("stability@0.5", "iou_x_stability@0.5") and cal.stats["spearman"] > 0.8
    assert cal.stability_offset == 0.5
    assert abs(cal.stats["spearman_by_signal"]["iou"]) < 0.3
    loaded = Calibration.load(cal.save(tmp_path / "c.json"))
    assert loaded.signal == cal.signal
    assert loaded.expected_dice(loaded.signal_of(0.18, 0.9)) > loaded.expected_dice(loaded.signal_of(0.18, 0.2)) + 0.3
