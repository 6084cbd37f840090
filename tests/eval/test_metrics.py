"""Metrics against hand-computed cases, and the accumulator's NaN bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfm.eval.accumulate import MetricAccumulator
from radfm.eval.metrics import (
    dice,
    folding_fraction,
    hd95,
    jacobian_determinant,
    jacobian_stats,
    mae,
    psnr,
    ssim,
    surface_dice,
)

SIDE, K = 6, 2  # cube side and offset in voxels


def _cubes(axis: int = 0, shape: tuple[int, ...] = (20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A SIDE³ cube and the same cube shifted K voxels along ``axis``."""
    a = np.zeros(shape, dtype=np.uint8)
    a[5:5 + SIDE, 5:5 + SIDE, 5:5 + SIDE] = 1
    return a, np.roll(a, K, axis=axis)


# --------------------------------------------------------------------------- overlap / surface
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


# --------------------------------------------------------------------------- deformation fields
def _grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def test_jacobian_of_zero_field_is_exactly_one() -> None:
    det = jacobian_determinant(np.zeros((3, 5, 6, 7)))
    assert det.shape == (5, 6, 7)
    assert np.array_equal(det, np.ones((5, 6, 7)))
    assert np.array_equal(jacobian_determinant(np.zeros((2, 4, 5))), np.ones((4, 5)))


@pytest.mark.parametrize("a", [0.1, -0.3, 1.0])
def test_jacobian_uniform_scaling(a: float) -> None:
    u = a * _grid((6, 7, 8))  # u = a·x in voxels
    np.testing.assert_allclose(jacobian_determinant(u), (1 + a) ** 3, rtol=1e-12)
    sp = (0.5, 1.25, 3.0)  # the same scaling expressed in mm: u_mm = a·x_mm
    u_mm = a * _grid((6, 7, 8)) * np.asarray(sp)[:, None, None, None]
    np.testing.assert_allclose(jacobian_determinant(u_mm, spacing=sp), (1 + a) ** 3, rtol=1e-12)


def test_jacobian_voxel_and_mm_fields_agree() -> None:
    rng = np.random.default_rng(1)
    u_vox = rng.normal(scale=0.3, size=(3, 8, 9, 10))
    sp = np.array([0.8, 1.1, 2.5])
    det_vox = jacobian_determinant(u_vox)
    det_mm = jacobian_determinant(u_vox * sp[:, None, None, None], spacing=tuple(sp))
    np.testing.assert_allclose(det_mm, det_vox, rtol=1e-10, atol=1e-12)
    assert np.allclose(jacobian_determinant(torch.from_numpy(u_vox)), det_vox)


def test_folding_on_a_slab() -> None:
    shape = (8, 10, 6)
    u = np.zeros((3, *shape))
    u[0, :, 2:5, :] = -2.0 * _grid(shape)[0, :, 2:5, :]  # ∂u_x/∂x = -2 → det = 1 - 2 = -1 on the slab
    det = jacobian_determinant(u)
    assert np.all(det[:, 2:5] == -1.0) and np.all(np.delete(det, [2, 3, 4], axis=1) == 1.0)
    assert folding_fraction(u) == pytest.approx(3 / 10)
    stats = jacobian_stats(u)
    assert stats["folding_percent"] == pytest.approx(30.0)
    assert stats["min"] == -1.0 and stats["max"] == 1.0
    assert stats["mean"] == pytest.approx(0.7 * 1 + 0.3 * -1)
    assert folding_fraction(np.zeros((3, 4, 4, 4))) == 0.0
    with pytest.raises(ValueError, match="field"):
        jacobian_determinant(np.zeros((3, 4, 4)))


# --------------------------------------------------------------------------- image fidelity
def test_psnr() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((8, 9, 10))
    assert psnr(x, x, data_range=1.0) == float("inf")
    t = np.zeros((4, 4, 4))
    assert psnr(t + 2.0, t, data_range=10.0) == pytest.approx(10 * math.log10(100 / 4))
    y = x + rng.normal(scale=0.05, size=x.shape)
    mse = float(np.mean((x - y) ** 2))
    assert psnr(torch.from_numpy(y), x, data_range=1.0) == pytest.approx(10 * math.log10(1 / mse))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)


def test_ssim() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((12, 13, 14)).astype(np.float32)
    assert ssim(x, x, data_range=1.0) == pytest.approx(1.0)
    noisy = ssim(x + rng.normal(scale=0.2, size=x.shape), x, data_range=1.0)
    assert 0.0 < noisy < 0.9
    assert ssim(x[:4], x[:4], data_range=1.0) == pytest.approx(1.0)  # thin volume: window shrinks to 3


def test_mae_with_mask() -> None:
    p = np.array([1.0, 2.0, 3.0, 10.0])
    t = np.zeros(4)
    assert mae(p, t) == pytest.approx(4.0)
    assert mae(p, t, mask=np.array([1, 1, 0, 0])) == pytest.approx(1.5)
    assert math.isnan(mae(p, t, mask=np.zeros(4)))


# --------------------------------------------------------------------------- accumulator
def test_accumulator_aggregate_with_nan() -> None:
    acc = MetricAccumulator()
    acc.add("c1", dice=0.8, hd95=2.0)
    acc.add("c2", dice=0.6, hd95=float("nan"))
    acc.add("c3", dice=torch.tensor(1.0))
    acc.add("c3", hd95=np.float64(4.0))  # a second call adds metrics to the same case
    agg = acc.aggregate()
    assert agg["dice"] == {"mean": pytest.approx(0.8), "std": pytest.approx(np.std([0.8, 0.6, 1.0])),
                           "median": pytest.approx(0.8), "n": 3, "n_nan": 0}
    assert agg["hd95"]["mean"] == pytest.approx(3.0) and agg["hd95"]["median"] == pytest.approx(3.0)
    assert agg["hd95"]["n"] == 2 and agg["hd95"]["n_nan"] == 1
    assert [r["case_id"] for r in acc.rows()] == ["c1", "c2", "c3"] and len(acc) == 3
    with pytest.raises(ValueError, match="already recorded"):
        acc.add("c1", dice=0.1)
    md = acc.to_markdown(precision=2)
    assert md.splitlines()[0] == "| metric | mean | std | median | n | n_nan |"
    assert "| dice | 0.80 |" in md
    assert acc.to_markdown(per_case=True).splitlines()[0] == "| case_id | dice | hd95 |"
    acc.reset()
    assert acc.aggregate() == {} and acc.rows() == []


def test_accumulator_all_nan_metric() -> None:
    acc = MetricAccumulator()
    acc.add("a", hd95=float("nan"))
    s = acc.aggregate()["hd95"]
    assert math.isnan(s["mean"]) and s["n"] == 0 and s["n_nan"] == 1
