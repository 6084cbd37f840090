"""Jacobian determinant, folding and their statistics on fields with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.metrics import folding_fraction, jacobian_determinant, jacobian_stats


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


@pytest.mark.parametrize("slab", [1, 3, 7])
def test_slabbed_stats_equal_the_whole_field(slab: int) -> None:
    """The slabs' one-plane halo keeps central differences exact, so any slab size gives the same stats."""
    rng = np.random.default_rng(4)
    u = rng.normal(scale=0.6, size=(3, 10, 7, 6))
    det = jacobian_determinant(u)
    assert (det <= 0).any()  # the field folds somewhere, so folding_percent is exercised
    pos = det[det > 0]
    want = {"mean": det.mean(), "std": det.std(), "min": det.min(), "max": det.max(),
            "folding_percent": 100.0 * np.count_nonzero(det <= 0) / det.size, "std_log": np.log(pos).std()}
    got = jacobian_stats(u, slab=slab)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k
    assert jacobian_stats(torch.from_numpy(u).float(), slab=slab)["folding_percent"] == got["folding_percent"]
