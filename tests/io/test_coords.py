"""radfm.io.coords: native index ↔ canonical index ↔ world RAS+ mm, and range checks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radfm.errors import InputError
from radfm.io import (
    Volume,
    canonical_index_to_native,
    canonical_index_to_world,
    check_inside,
    load_volume,
    lps_to_ras,
    native_index_to_canonical,
    to_canonical,
    world_to_canonical_index,
)


def _oblique(path: Path) -> nib.Nifti1Image:
    """20°/20° oblique, axes permuted and flipped (stored roughly P, S, L)."""
    ax, ay = np.deg2rad(20), np.deg2rad(-20)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    aff = np.eye(4)
    aff[:3, :3] = rx @ ry @ np.array([[0, 0, -1.2], [-0.9, 0, 0], [0, 1.5, 0]])
    aff[:3, 3] = (-5.0, 17.0, 60.0)
    data = np.random.default_rng(3).random((7, 8, 9)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, aff), path)
    return nib.load(path)


def test_native_and_canonical_paths_reach_the_same_world_point(tmp_path: Path) -> None:
    img = _oblique(tmp_path / "o.nii.gz")
    stored = np.asarray(img.dataobj)
    v = load_volume(tmp_path / "o.nii.gz")
    rng = np.random.default_rng(0)
    native = np.stack([rng.integers(0, n, 25) for n in stored.shape], axis=1).astype(float)
    canonical = native_index_to_canonical(native, v)
    assert np.array_equal(canonical, np.rint(canonical))  # an axis permutation: integers stay integers
    world_native = nib.affines.apply_affine(img.affine, native)
    assert np.allclose(canonical_index_to_world(canonical, v), world_native, atol=1e-9)
    idx = canonical.astype(int)
    assert np.array_equal(v.array[idx[:, 0], idx[:, 1], idx[:, 2]],
                          stored[tuple(native.astype(int).T)])
    assert np.array_equal(canonical_index_to_native(canonical, v), native)
    assert np.allclose(world_to_canonical_index(world_native, v), canonical, atol=1e-9)
    # a single (3,) point keeps its shape, continuous indices map linearly
    p = np.array([1.25, 2.5, 3.75])
    assert native_index_to_canonical(p, v).shape == (3,)
    assert np.allclose(canonical_index_to_world(native_index_to_canonical(p, v), v),
                       nib.affines.apply_affine(img.affine, p))


def test_in_memory_volume_has_identity_index_mapping() -> None:
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    v = Volume(array=np.zeros((3, 3, 3)), affine=aff)
    assert np.array_equal(native_index_to_canonical([1, 2, 0], v), [1, 2, 0])
    assert np.array_equal(canonical_index_to_world([1, 1, 1], v), [2, 3, 4])


def test_to_canonical_matches_nibabel() -> None:
    aff = np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 5], [0, 3.0, 0, -7], [0, 0, 0, 1]])
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    canon, caff, _ = to_canonical(arr, aff)
    ref = nib.as_closest_canonical(nib.Nifti1Image(arr.astype(np.int16), aff))
    assert np.array_equal(canon, np.asarray(ref.dataobj)) and np.allclose(caff, ref.affine)


def test_lps_to_ras() -> None:
    assert np.array_equal(lps_to_ras([[1.0, 2.0, 3.0], [-4.0, 0.0, 1.0]]), [[-1, -2, 3], [4, 0, 1]])


def test_check_inside_names_coordinate_and_range() -> None:
    assert np.array_equal(check_inside([[0.4, 9.4, 2.0]], (10, 10, 3)), [[0, 9, 2]])
    with pytest.raises(InputError, match=r"\(3, 12, 1\) is outside the image: axis 1 must be in 0..9"):
        check_inside(np.array([[1, 1, 1], [3, 12, 1]]), (10, 10, 3))
    with pytest.raises(InputError, match=r"axis 2 must be in 0..2"):
        check_inside((0, 0, -1), (10, 10, 3))
    with pytest.raises(InputError, match=r"shape \(3,\) or \(N, 3\)"):
        check_inside([1, 2], (10, 10, 3))
