"""HD95 and surface Dice in mm on shifted cubes, the empty-mask conventions, and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radfm.metrics import dice, hd95, surface_dice

SIDE, K = 6, 2  # cube side and offset in voxels


def _cubes(axis: int = 0, shape: tuple[int, ...] = (20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A SIDE³ cube and the same cube shifted K voxels along ``axis``."""
    a = np.zeros(shape, dtype=np.uint8)
    a[5:5 + SIDE, 5:5 + SIDE, 5:5 + SIDE] = 1
    return a, np.roll(a, K, axis=axis)


@pytest.mark.parametrize(("axis", "spacing"), [(0, (2.0, 1.0, 1.0)), (2, (0.7, 0.8, 1.5))])
def test_hd95_offset_cubes_is_shift_in_mm(axis: int, spacing: tuple[float, float, float]) -> None:
    a, b = _cubes(axis)
    assert hd95(a, b, spacing=spacing) == pytest.approx(K * spacing[axis], rel=1e-6)
    assert hd95(a, a, spacing=spacing) == 0.0


def test_surface_dice_tolerance() -> None:
    spacing = (2.0, 1.0, 1.0)
    a, b = _cubes(0)
    shift_mm = K * spacing[0]
    assert surface_dice(a, b, tolerance_mm=shift_mm, spacing=spacing) == pytest.approx(1.0)
    assert surface_dice(a, b, tolerance_mm=shift_mm + 1, spacing=spacing) == pytest.approx(1.0)
    below = surface_dice(a, b, tolerance_mm=shift_mm - 0.1, spacing=spacing)
    assert 0.0 < below < 1.0


def test_empty_mask_conventions() -> None:
    a, _ = _cubes()
    e = np.zeros_like(a)
    assert dice(e, e) == 1.0 and dice(e, a) == 0.0 and dice(a, e) == 0.0
    assert hd95(e, e) == 0.0
    assert math.isnan(hd95(e, a)) and math.isnan(hd95(a, e))
    assert hd95(e, a, empty_value=float("inf")) == float("inf")
    assert surface_dice(e, e, tolerance_mm=1.0) == 1.0
    assert surface_dice(e, a, tolerance_mm=1.0) == 0.0 and surface_dice(a, e, tolerance_mm=1.0) == 0.0
    per = hd95(a * 2, a, labels=[1, 2])  # label 1 only in target, label 2 only in pred
    assert math.isnan(per[1]) and math.isnan(per[2])


def test_mask_at_image_border() -> None:
    """Masks touching the image edge still have a boundary there (crop pads with background)."""
    a = np.zeros((10, 10, 10), np.uint8)
    a[:4] = 1
    b = np.zeros_like(a)
    b[:5] = 1
    assert hd95(a, b) == pytest.approx(1.0)


def test_shape_and_spacing_errors() -> None:
    a, _ = _cubes()
    with pytest.raises(ValueError, match="shape"):
        dice(a, a[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(a, a, tolerance_mm=-1.0)
