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
