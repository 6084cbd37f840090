"""PreparedGeometry through an oblique affine: rotation about two axes, anisotropic spacing, a flipped
axis and a non-zero origin, so that no map can pass by being an identity or a plain transpose."""

from __future__ import annotations

import itertools
from dataclasses import FrozenInstanceError, asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from radfm.errors import InputError
from radfm.io import load_volume
from radfm.preprocess import PreparedGeometry, PreprocessPlan, apply_plan, restore_to_input


def oblique_affine() -> np.ndarray:
    def rot(axis: int, deg: float) -> np.ndarray:
        a = np.deg2rad(deg)
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    lin = rot(2, 25.0) @ rot(0, 17.0) @ np.diag([0.8, 1.3, 2.9]) @ np.diag([1.0, -1.0, 1.0])  # y flipped
    # axes stored as (A, R, S)-ish: swap the first two columns so the stored order is not canonical
    lin = lin[:, [1, 0, 2]]
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = (-41.0, 23.5, 77.0)
    return aff


SHAPE = (23, 31, 17)  # stored (i, j, k)


@pytest.fixture()
def nifti(tmp_path: Path) -> Path:
    path = tmp_path / "oblique.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), oblique_affine()), path)
    return path


def _prepared(path: Path, spacing: tuple[float, float, float] = (1.7, 1.1, 2.3)):
    volume = load_volume(path, modality="CT")
    plan = PreprocessPlan(target_spacing=spacing, pad_multiple=(8, 8, 8))
    return volume, plan, apply_plan(volume, plan)


def test_orientation_is_really_permuted_and_flipped(nifti: Path) -> None:
    volume, _, prepared = _prepared(nifti)
    g = prepared.geometry
    assert volume.shape != SHAPE  # canonical order differs from the stored one
    m = g.matrix("stored", "canonical")
    assert not np.allclose(m, np.eye(4)) and np.any(np.diag(m[:3, :3]) != 1)
    assert g.padded_shape != g.resampled_shape  # padding present, so the crop is exercised


def test_point_round_trip_stored_world_model_stored(nifti: Path) -> None:
    _, _, prepared = _prepared(nifti)
    g = prepared.geometry
    rng = np.random.default_rng(1)
    stored = rng.uniform(0, np.asarray(SHAPE) - 1, size=(50, 3))
    world = g.convert(stored, "stored", "world")
    np.testing.assert_allclose(world, nib.affines.apply_affine(nib.load(nifti).affine, stored), atol=1e-6)
    model = g.convert(world, "world", "model")
    back = g.convert(model, "model", "stored")
    assert np.abs(back - stored).max() < 1e-4
    # the model grid follows F.interpolate(align_corners=False): voxel centres at (c + 0.5) * scale - 0.5
    canon = g.convert(stored, "stored", "canonical")
    np.testing.assert_allclose(model, (canon[:, ::-1] + 0.5) * g.scale - 0.5, atol=1e-9)


def test_box_contains_all_eight_mapped_corners(nifti: Path) -> None:
    _, _, prepared = _prepared(nifti)
    g = prepared.geometry
    lo_w, hi_w = np.array([-30.0, 10.0, 70.0]), np.array([-10.0, 35.0, 95.0])  # a world mm box
    lo, hi = g.convert_box(lo_w, hi_w, "world", "model")
    corners = np.array(list(itertools.product(*zip(lo_w, hi_w))))
    mapped = g.convert(corners, "world", "model")
    assert np.all(mapped >= lo - 1e-9) and np.all(mapped <= hi + 1e-9)
    assert np.allclose(mapped.min(0), lo) and np.allclose(mapped.max(0), hi)  # and is the smallest such box
    # an inclusive voxel box keeps its extent: canonical voxels 2..5 along x cover model x (2..6)·s − 0.5
    vlo, vhi = g.convert_box(np.array([2, 3, 4]), np.array([5, 6, 7]), "canonical", "model", extent=True)
    s = g.scale
    np.testing.assert_allclose(vlo, np.array([4, 3, 2]) * s)
    np.testing.assert_allclose(vhi, np.array([8, 7, 6]) * s - 1)


def test_marker_voxel_round_trips_to_the_voxel_nibabel_names(nifti: Path, tmp_path: Path) -> None:
    """A marker at a known world point, pushed model grid → canonical → stored, lands on nibabel's voxel."""
    _, _, prepared = _prepared(nifti, spacing=(0.8, 1.3, 2.9))  # close to native: 1:1-ish resampling
    g = prepared.geometry
    marker_stored = np.array([7, 19, 11])
    marker_world = nib.affines.apply_affine(oblique_affine(), marker_stored)
    # expected voxel from nibabel alone
    expected = np.rint(nib.affines.apply_affine(np.linalg.inv(nib.load(nifti).affine), marker_world)).astype(int)
    np.testing.assert_array_equal(expected, marker_stored)
    # a one-hot logit blob at the marker's model position
    m = g.convert(marker_world, "world", "model")
    logits = torch.full((1, *g.padded_shape), -10.0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in g.padded_shape],
                                      indexing="ij"))
    dist = ((grid - torch.tensor(m, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0)
    logits[0][dist <= 0.7 ** 2] = 10.0
    stored = g.to_stored(restore_to_input(logits, prepared, kind="label"))
    assert stored.shape == SHAPE
    hits = np.argwhere(stored)
    assert len(hits) >= 1
    assert np.abs(hits - marker_stored).max() <= 1 and stored[tuple(marker_stored)] == 1
    # the same through nibabel's own writing: the mask saved with the file's affine is read back in place
    out = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(stored.astype(np.uint8), nib.load(nifti).affine), out)
    assert np.asarray(nib.load(out).dataobj)[tuple(expected)] == 1


def test_window_output_equals_the_whole_grid_inside_its_footprint(nifti: Path) -> None:
    _, _, prepared = _prepared(nifti)
    g = prepared.geometry
    logits = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *g.padded_shape), 3, 1, 1)[0]
    full = g.to_canonical(logits, kind="label")
    window = ((0, g.padded_shape[0]), (8, g.padded_shape[1]), (0, g.padded_shape[2]))
    part = g.to_canonical(logits[:, :, 8:], kind="label", window=window)
    slices, _ = g.footprint(window)
    inner = slices[1].start + 2  # away from the window edge, where interpolation clamps
    np.testing.assert_array_equal(part[:, inner:], full[:, inner:])
    assert not part[:, : slices[1].start].any()
    cont = g.to_canonical(torch.randn(3, *g.padded_shape), kind="continuous")
    assert cont.shape == (*g.canonical_shape, 3)


def test_geometry_and_prepared_input_are_frozen_and_the_plan_is_not_changed(nifti: Path) -> None:
    volume, plan, prepared = _prepared(nifti)
    before = asdict(plan)
    apply_plan(volume, plan)
    assert asdict(plan) == before
    with pytest.raises(FrozenInstanceError):
        prepared.geometry.padded_shape = (1, 1, 1)  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        prepared.tensor = torch.zeros(1)  # type: ignore[misc]


def test_world_point_outside_names_the_mm_span(nifti: Path) -> None:
    _, _, prepared = _prepared(nifti)
    with pytest.raises(InputError, match=r"world RAS\+.*outside the image"):
        prepared.geometry.checked_points([[500.0, 0.0, 0.0]], "world")
    with pytest.raises(InputError, match="outside the image"):
        prepared.geometry.checked_points([[SHAPE[0], 0, 0]], "voxel")


def test_of_volume_without_a_model_grid_is_the_canonical_grid_reversed(nifti: Path) -> None:
    volume = load_volume(nifti)
    g = PreparedGeometry.of(volume)
    pts = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(g.convert(pts, "canonical", "model"), pts[:, ::-1])
