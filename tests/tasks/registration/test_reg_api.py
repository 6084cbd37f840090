"""register(): world-coordinate resampling, outputs, conventions and clear errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.data.phantom import make_phantom
from radfm.errors import InputError
from radfm.io import Volume
from radfm.tasks.registration.api import field_to_world, register


@pytest.fixture(scope="module")
def ct() -> Volume:
    return make_phantom(0, modality="CT", shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0)).image


def _affine(spacing: float, origin: tuple[float, float, float]) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = origin
    return a


def test_moving_on_another_grid_is_resampled_through_world_coordinates(tiny_model, ct) -> None:
    """Moving's origin is 6 mm (3 voxels) further along x and its array starts 3 voxels later in the
    anatomy, so fixed voxel j and moving voxel j - 3 are the same world point. With the (untrained,
    identity) network the warped image must equal the fixed one wherever the moving image has data."""
    fixed = Volume(ct.array, _affine(2.0, (0.0, 0.0, 0.0)), "CT")
    moved_array = np.full_like(ct.array, ct.array.min())
    moved_array[:-3] = ct.array[3:]
    moving = Volume(moved_array, _affine(2.0, (6.0, 0.0, 0.0)), "CT")
    labels = Volume((moved_array > 0).astype(np.uint8), moving.affine.copy(), "CT")
    result = register(fixed, moving, model=tiny_model, labels=labels)
    assert result.warped.shape == fixed.shape and np.allclose(result.warped.affine, fixed.affine)
    np.testing.assert_allclose(result.warped.array[3:], fixed.array[3:], atol=0.01)  # HU; float32 grid
    assert np.array_equal(result.warped_labels.array[3:], (fixed.array[3:] > 0).astype(np.uint8))
    assert not result.warped_labels.array[:3].any()  # outside the moving image: background
    assert result.warped_labels.array.dtype == np.uint8
    assert np.abs(result.field).max() == 0  # the deformable part is the identity; the shift was geometry
    assert result.stats["folding_percent"] == 0.0 and result.stats["runtime_s"] > 0


def test_different_spacing_and_a_flipped_axis(tiny_model, ct) -> None:
    """Moving at 1 mm (2x finer, x axis stored flipped) is sampled at the fixed voxel centres."""
    fixed = Volume(ct.array, _affine(2.0, (0.0, 0.0, 0.0)), "CT")
    fine = np.repeat(np.repeat(np.repeat(ct.array, 2, 0), 2, 1), 2, 2)[::-1]  # nearest upsampling, x flipped
    aff = _affine(1.0, (0.0, 0.0, 0.0))
    aff[0, 0], aff[0, 3] = -1.0, 63.5 - 0.5  # index 0 is the right-most 1 mm voxel
    aff[1, 3] = aff[2, 3] = -0.5
    moving = Volume(np.ascontiguousarray(fine), aff, "CT")
    result = register(fixed, moving, model=tiny_model)
    inner = (slice(2, -2),) * 3
    assert np.abs(result.warped.array[inner] - fixed.array[inner]).max() < 1e-2 * np.ptp(fixed.array)


def test_field_convention_mm_and_world(tiny_model, ct) -> None:
    """A field in mm along canonical axes becomes world RAS+ through the direction matrix."""
    f = np.zeros((3, 4, 4, 4), np.float32)
    f[0] = 2.0  # +2 mm along canonical axis 0
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # canonical axis 0 points to patient Left in world
    w = field_to_world(f, flip @ _affine(2.0, (0, 0, 0)))
    assert w.shape == (4, 4, 4, 3) and np.allclose(w[..., 0], -2.0) and np.allclose(w[..., 1:], 0)


def test_two_dimensional_input_is_a_clear_error(tiny_model, ct) -> None:
    slice2d = Volume(ct.array[:, :, 16:17], ct.affine, "CT")
    with pytest.raises(InputError, match="2D"):
        register(ct, slice2d, model=tiny_model)
    with pytest.raises(InputError, match="2D"):
        register(Volume(ct.array[:, :, 0], ct.affine, "CT"), ct, model=tiny_model)


def test_ct_to_mr_with_ncc_suggests_mutual_information(tiny_model, ct) -> None:
    mr = make_phantom(1, modality="MR", shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0)).image
    with pytest.raises(InputError, match="mutual information") as err:
        register(ct, mr, model=tiny_model, similarity="ncc")
    assert "--similarity mi" in err.value.hint
    result = register(ct, mr, model=tiny_model, similarity="mi")  # allowed with MI
    assert result.stats["modalities"] == ["CT", "MR"]


def test_empty_or_misplaced_labels_are_clear_errors(tiny_model, ct) -> None:
    with pytest.raises(InputError, match="empty"):
        register(ct, ct, model=tiny_model, labels=Volume(np.zeros(ct.shape, np.uint8), ct.affine, "CT"))
    with pytest.raises(InputError, match="moving image's grid"):
        register(ct, ct, model=tiny_model, labels=Volume(np.ones((8, 8, 8), np.uint8), ct.affine, "CT"))


def test_diffeomorphic_and_instance_steps_run(tiny_model) -> None:
    from radfm.data.deform import make_phantom_pair

    pair = make_phantom_pair(2, shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0), max_displacement_mm=4.0)
    r = register(pair.fixed.image, pair.moving.image, model=tiny_model, diffeomorphic=True, instance_steps=3)
    assert r.stats["diffeomorphic"] and r.stats["instance_steps"] == 3
    assert np.abs(r.field).max() > 0  # instance optimisation moved the field
    assert r.stats["folding_percent"] == 0.0


def _constant_field(forward, dzyx):
    """Wraps the network's forward to return one constant displacement (model order, plan-grid voxels)."""
    const = torch.tensor(dzyx, dtype=torch.float32).view(1, 3, 1, 1, 1)

    def patched(fixed, moving, **kw):
        out = forward(fixed, moving, **kw)
        out.ddf = const.expand(1, 3, *fixed.shape[2:]).clone()
        return out

    return patched


def test_network_field_axes_and_units_on_a_non_cubic_anisotropic_grid(tiny_model, monkeypatch) -> None:
    """A plan-grid field of (dz, dy, dx) = (1, 0, -0.5) voxels at 2 mm is +2 mm along canonical z and
    -1 mm along canonical x; on a 1 x 1.5 x 2.5 mm fixed grid the warped image is the moving image
    sampled there, i.e. shifted by (-1, 0, +2) mm."""
    shape = (40, 30, 24)  # canonical X, Y, Z; spacing 1, 1.5, 2.5 mm
    aff = np.diag([1.0, 1.5, 2.5, 1.0])
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    world = [x * 1.0, y * 1.5, z * 2.5]
    img = np.sin(world[0] / 6) + np.cos(world[1] / 7) + np.sin(world[2] / 9) + 3
    vol = Volume(img.astype(np.float32), aff, "MR")
    monkeypatch.setattr(tiny_model, "forward", _constant_field(tiny_model.forward, (1.0, 0.0, -0.5)))
    result = register(vol, vol, model=tiny_model)
    np.testing.assert_allclose(result.field[0], -1.0, atol=1e-4)  # mm along canonical x
    np.testing.assert_allclose(result.field[1], 0.0, atol=1e-4)
    np.testing.assert_allclose(result.field[2], 2.0, atol=1e-4)
    expected = np.sin((world[0] - 1.0) / 6) + np.cos(world[1] / 7) + np.sin((world[2] + 2.0) / 9) + 3
    inner = (slice(2, -2), slice(2, -2), slice(2, -2))
    # trilinear error of sin(z / 9) sampled 0.8 voxel off-centre at 2.5 mm: h²/8 · max|f''| ≈ 0.01
    np.testing.assert_allclose(result.warped.array[inner], expected[inner], atol=1.2e-2)
