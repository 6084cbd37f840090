"""Field algebra of radfm.tasks.registration.functional: warping, integration, composition, inversion."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from radfm.data.deform import field_canonical_to_model, random_smooth_field
from radfm.data.deform import warp as np_warp
from radfm.errors import InputError
from radfm.tasks.registration import functional as RF


def _smooth_field(shape=(24, 28, 20), mm=3.0, seed=0) -> torch.Tensor:
    f = random_smooth_field(shape, max_displacement_mm=mm, smoothness_mm=12.0, seed=seed)
    return torch.from_numpy(f)[None]  # (1, 3, D, H, W): the field's axes are the tensor's axes


def test_integer_shift_is_exact_in_the_interior() -> None:
    x = torch.randn(1, 2, 12, 14, 16, generator=torch.Generator().manual_seed(0))
    u = torch.zeros(1, 3, 12, 14, 16)
    u[:, 0], u[:, 1], u[:, 2] = 2.0, -1.0, 3.0  # out(z, y, x) = in(z + 2, y - 1, x + 3)
    out = RF.warp(x, u)
    assert torch.allclose(out[:, :, :-2, 1:, :-3], x[:, :, 2:, :-1, 3:], atol=1e-5)


def test_identity_field_leaves_images_and_labels_unchanged() -> None:
    x = torch.randn(2, 1, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(2, 3, 9, 10, 11)
    # float32 grid arithmetic puts sample points ~1e-7 voxel off the centres: errors ~1e-6 on unit
    # noise; a half-voxel or axis mix-up would be O(1).
    assert torch.allclose(RF.warp(x, zero), x, atol=1e-5)
    lab = torch.randint(0, 7, (2, 1, 9, 10, 11), dtype=torch.uint8)
    assert torch.equal(RF.warp(lab, zero, mode="nearest"), lab)


def test_labels_stay_integer_with_their_values() -> None:
    lab = torch.randint(0, 5, (1, 1, 16, 16, 16)).to(torch.int16) * 10
    out = RF.warp(lab, _smooth_field((16, 16, 16)), mode="nearest")
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) <= set(lab.unique().tolist())
    with pytest.raises(InputError, match="nearest"):
        RF.warp(lab, torch.zeros(1, 3, 16, 16, 16))


def test_matches_numpy_deform_warp_and_monai_warp() -> None:
    """The convention out(x) = in(x + u(x)) agrees with radfm.data.deform.warp and MONAI's Warp."""
    from monai.networks.blocks import Warp

    arr = np.random.default_rng(0).normal(size=(20, 22, 18)).astype(np.float32)
    f = random_smooth_field(arr.shape, max_displacement_mm=3.0, smoothness_mm=10.0, seed=1)
    ref = np_warp(arr, f, order=1, mode="nearest")
    ours = RF.warp(torch.from_numpy(arr)[None, None], torch.from_numpy(f)[None])[0, 0].numpy()
    assert np.abs(ours - ref).max() < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai = Warp()(torch.from_numpy(arr)[None, None], torch.from_numpy(f)[None])[0, 0].numpy()
    assert np.abs(ours - monai).max() < 1e-5
    # canonical -> model order: transposing the array and the field together gives the same result
    m_arr = np.ascontiguousarray(arr.transpose(2, 1, 0))
    m_out = RF.warp(torch.from_numpy(m_arr)[None, None], torch.from_numpy(field_canonical_to_model(f))[None])
    assert np.abs(m_out[0, 0].numpy().transpose(2, 1, 0) - ref).max() < 1e-4


def test_scaling_and_squaring_of_a_smooth_velocity_does_not_fold() -> None:
    v = _smooth_field(mm=6.0, seed=3)  # up to 6 voxels: large enough that x + v(x) itself could fold
    u = RF.integrate_velocity(v, steps=7)
    det = RF.jacobian_determinant(u)
    assert float(det.min()) > 0.0
    assert (u - v).abs().max() > 0.01  # it is not just the velocity
    from monai.networks.blocks import DVF2DDF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai = DVF2DDF(7, padding_mode="border")(v)
    assert (monai - u).abs().max() < 1e-4


def test_composition_with_the_inverse_is_close_to_identity() -> None:
    """Bar: mean |compose(u, invert(u))| < 0.02 voxel and max < 0.25 voxel away from the border
    (3-voxel margin) for a smooth field of up to 3 voxels."""
    u = _smooth_field(mm=3.0, seed=5)
    w = RF.invert(u, iters=30)
    residual = RF.compose(u, w).pow(2).sum(1).sqrt()[:, 3:-3, 3:-3, 3:-3]
    assert float(residual.mean()) < 0.02
    assert float(residual.max()) < 0.25
    # and the order: warp by u then by v equals one warp by compose(u, v) for smooth images
    g = RF.identity_grid((24, 28, 20))[0]
    img = (torch.sin(g[0] / 4) + torch.cos(g[1] / 5) + torch.sin(g[2] / 3))[None, None]  # smooth image
    v = _smooth_field(mm=2.0, seed=6)
    two = RF.warp(RF.warp(img, u), v)
    one = RF.warp(img, RF.compose(u, v))
    assert float((two - one)[..., 4:-4, 4:-4, 4:-4].abs().mean()) < 0.02 * float(img.std())


def test_resize_field_keeps_a_translation_in_physical_units() -> None:
    u = torch.zeros(1, 3, 8, 8, 8)
    u[:, 0] = 1.5  # 1.5 coarse voxels
    big = RF.resize_field(u, (16, 24, 8))
    assert torch.allclose(big[:, 0], torch.full((1, 16, 24, 8), 3.0))
    assert torch.allclose(big[:, 1:], torch.zeros(1, 2, 16, 24, 8))


def test_affine_ddf_and_resample() -> None:
    m = np.eye(4)
    m[:3, 3] = [1.0, -2.0, 0.5]
    u = RF.affine_ddf(m, (5, 6, 7))
    assert torch.allclose(u[0, :, 2, 3, 4], torch.tensor([1.0, -2.0, 0.5]))
    img = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 1, 5, 6, 7)
    coords = RF.identity_grid((5, 6, 7)) + u
    assert torch.allclose(RF.resample(img, coords)[0, 0, 1, 3, 2], img[0, 0, 2, 1, 2] * 0.5 + img[0, 0, 2, 1, 3] * 0.5)


def test_loss_jacobian_matches_radfm_metrics() -> None:
    """The differentiable determinant of the folding loss is the metric's definition (torch, (B, 3, D, H, W))."""
    from radfm.metrics import jacobian_determinant

    f = random_smooth_field((16, 18, 20), max_displacement_mm=4.0, smoothness_mm=8.0, seed=2, min_jacobian=-5)
    ours = RF.jacobian_determinant(torch.from_numpy(f)[None])[0].double().numpy()
    ref = jacobian_determinant(f)
    assert ours.shape == ref.shape
    assert float(abs(ours - ref).max()) < 1e-4


def test_bad_shapes_are_input_errors() -> None:
    with pytest.raises(InputError):
        RF.warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(InputError):
        RF.warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))
