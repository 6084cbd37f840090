"""Deformations: exact warps, diffeomorphic random fields, registration pairs with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.data.deform import (
    field_canonical_to_model,
    field_model_to_canonical,
    make_phantom_pair,
    random_smooth_field,
    warp,
)
from radfm.data.patches import canonical_to_model
from radfm.data.report_text import findings_mentioned
from radfm.errors import InputError


def _jacobian_determinant(field: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """det(I + du/dx) with u in voxels (spacing cancels: du_a/dx_b in voxel units)."""
    del spacing
    g = [np.gradient(field[a]) for a in range(3)]
    j = np.empty((3, 3, *field.shape[1:]))
    for a in range(3):
        for b in range(3):
            j[a, b] = g[a][b] + (a == b)
    return np.linalg.det(np.moveaxis(j, (0, 1), (-2, -1)))


def test_warp_by_integer_shift_is_exact():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(12, 10, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=(12, 10, 8)).astype(np.uint8)
    field = np.zeros((3, 12, 10, 8), np.float32)
    field[0], field[1], field[2] = 2, -1, 3
    out = warp(arr, field, order=1)
    assert np.array_equal(out[:-2, 1:, :-3], arr[2:, :-1, 3:])
    out0 = warp(labels, field, order=0)
    assert out0.dtype == np.uint8 and np.array_equal(out0[:-2, 1:, :-3], labels[2:, :-1, 3:])
    assert np.array_equal(warp(arr, np.zeros_like(field)), arr)
    multi = warp(np.stack([arr, 2 * arr]), field)
    assert multi.shape == (2, 12, 10, 8) and np.allclose(multi[1], 2 * out)


def test_warp_rejects_bad_input():
    with pytest.raises(InputError, match="field shape"):
        warp(np.zeros((4, 4, 4)), np.zeros((3, 4, 4, 5)))
    with pytest.raises(InputError, match="order"):
        warp(np.zeros((4, 4, 4)), np.zeros((3, 4, 4, 4)), order=3)


def test_nearest_warp_keeps_label_values():
    labels = np.random.default_rng(1).integers(0, 4, (20, 20, 20)).astype(np.uint8)
    field = random_smooth_field((20, 20, 20), max_displacement_mm=3.0, smoothness_mm=8.0, seed=2)
    out = warp(labels, field, order=0)
    assert set(np.unique(out)) <= set(np.unique(labels))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.8, 0.8, 3.0)])
def test_random_field_is_smooth_bounded_and_diffeomorphic(spacing):
    shape = (48, 40, 32)
    f = random_smooth_field(shape, spacing=spacing, max_displacement_mm=6.0, smoothness_mm=20.0, seed=3)
    assert f.shape == (3, *shape) and f.dtype == np.float32
    mm = np.sqrt(((f * np.asarray(spacing)[:, None, None, None]) ** 2).sum(0))
    assert mm.max() <= 6.0 + 1e-4 and mm.max() > 3.0
    assert _jacobian_determinant(f).min() > 0.0
    assert np.array_equal(f, random_smooth_field(shape, spacing=spacing, seed=3))
    assert not np.array_equal(f, random_smooth_field(shape, spacing=spacing, seed=4))


def test_aggressive_field_is_shrunk_until_it_does_not_fold():
    f = random_smooth_field((32, 32, 32), max_displacement_mm=20.0, smoothness_mm=6.0, seed=5)
    assert _jacobian_determinant(f).min() > 0.0


def test_pair_fixed_is_moving_warped_by_the_field():
    pair = make_phantom_pair(7, shape=(48, 48, 48), n_lesions=2)
    assert pair.field.shape == (3, 48, 48, 48)
    assert np.array_equal(warp(pair.moving.labels.array, pair.field, order=0), pair.fixed.labels.array)
    assert not np.array_equal(pair.fixed.labels.array, pair.moving.labels.array)
    # Image: same up to fresh scanner noise.
    resampled = warp(pair.moving.image.array, pair.field)
    assert np.corrcoef(resampled.ravel(), pair.fixed.image.array.ravel())[0, 1] > 0.98
    assert pair.fixed.image.meta["simulated"] is True and pair.fixed.image.meta["pair_role"] == "fixed"
    assert [f.finding for f in pair.fixed.findings] == [f.finding for f in pair.moving.findings]
    assert findings_mentioned(pair.fixed.report.text) == {f.finding for f in pair.fixed.findings}
    again = make_phantom_pair(7, shape=(48, 48, 48), n_lesions=2)
    assert np.array_equal(again.field, pair.field)
    assert np.array_equal(again.fixed.image.array, pair.fixed.image.array)


def test_pair_rejects_unknown_options():
    with pytest.raises(InputError, match="unknown phantom options"):
        make_phantom_pair(0, shape=(32, 32, 32), colour="red")


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")
def test_model_order_field_matches_monai_warp():
    """The documented convention is MONAI's: Warp(img, ddf)(x) = img(x + ddf(x)) in model order."""
    monai_blocks = pytest.importorskip("monai.networks.blocks")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(14, 12, 10)).astype(np.float32)
    field = random_smooth_field(img.shape, max_displacement_mm=2.0, smoothness_mm=6.0, seed=9)
    ours = warp(img, field, order=1, mode="nearest")
    model_img = torch.from_numpy(np.ascontiguousarray(canonical_to_model(img)))[None, None]
    model_ddf = torch.from_numpy(field_canonical_to_model(field))[None]
    theirs = monai_blocks.Warp(mode="bilinear", padding_mode="border")(model_img, model_ddf)[0, 0].numpy()
    assert np.allclose(canonical_to_model(ours), theirs, atol=1e-4)
    assert np.array_equal(field_model_to_canonical(field_canonical_to_model(field)), field)
