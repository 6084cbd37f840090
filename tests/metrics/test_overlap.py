"""Dice against hand-computed cases and MONAI; ``dice_score`` is the one binary definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.metrics import dice, dice_score

SIDE, K = 6, 2  # cube side and offset in voxels


def _cubes(axis: int = 0, shape: tuple[int, ...] = (20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A SIDE³ cube and the same cube shifted K voxels along ``axis``."""
    a = np.zeros(shape, dtype=np.uint8)
    a[5:5 + SIDE, 5:5 + SIDE, 5:5 + SIDE] = 1
    return a, np.roll(a, K, axis=axis)


def test_dice_offset_cubes_exact() -> None:
    a, b = _cubes()
    # overlap (SIDE-K)·SIDE² of 2·SIDE³ voxels → (SIDE-K)/SIDE
    assert dice(a, b) == pytest.approx((SIDE - K) / SIDE, abs=1e-15)
    assert dice(a, a) == 1.0
    assert dice(torch.from_numpy(a), torch.from_numpy(b)) == dice(a, b)


def test_dice_matches_monai() -> None:
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    p, t = rng.random((12, 13, 14)) > 0.6, rng.random((12, 13, 14)) > 0.5
    ref = compute_dice(torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float(),
                       ignore_empty=False)
    assert dice(p, t) == pytest.approx(float(ref), rel=1e-6)


def test_dice_multilabel() -> None:
    p = np.array([0, 1, 1, 2, 2, 0])
    t = np.array([0, 1, 2, 2, 2, 2])
    out = dice(p, t, labels=[1, 2, 7])
    assert out == {1: pytest.approx(2 * 1 / 3), 2: pytest.approx(2 * 2 / 6), 7: 1.0}
    # binary view: any non-zero label is foreground
    assert dice(p, t) == pytest.approx(2 * 4 / (4 + 5))


@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_dice_score_accepts_numpy_and_torch_bool_and_int(to) -> None:
    a, b = _cubes()
    want = (SIDE - K) / SIDE
    assert dice_score(to(a), to(b)) == pytest.approx(want, abs=1e-15)  # uint8
    assert dice_score(to(a.astype(bool)), to(b.astype(bool))) == pytest.approx(want, abs=1e-15)
    assert dice_score(to(a.astype(np.int64) * 7), to(b.astype(np.int64))) == pytest.approx(want, abs=1e-15)
    assert isinstance(dice_score(to(a), to(b)), float)


def test_dice_score_empty_cases_and_shape_check() -> None:
    a, _ = _cubes()
    e = np.zeros_like(a)
    assert dice_score(e, e) == 1.0
    assert dice_score(e.astype(bool), torch.zeros(e.shape, dtype=torch.bool)) == 1.0
    assert dice_score(a, e) == 0.0 and dice_score(e, a) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice_score(a, a[:-1])
    assert dice_score(a, np.roll(a, K, axis=1)) == dice(a, np.roll(a, K, axis=1))
