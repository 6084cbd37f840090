"""End to end through the predictor on an oblique NIfTI (rotation about two axes, anisotropic spacing,
a flipped axis, non-zero origin): a click in world mm and the same click in stored voxels give the
same mask, and the predictor never changes the plan it was given."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from segtest_utils import blob_volume, tiny_model

from radfm.io import load_volume
from radfm.tasks.segmentation.predictor import SegPredictor


def _oblique(path: Path) -> Path:
    a, b = np.deg2rad(25.0), np.deg2rad(17.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = (rz @ rx @ np.diag([1.6, -2.2, 2.9]))[:, [1, 0, 2]]  # flipped and permuted storage
    aff[:3, 3] = (-41.0, 23.5, 77.0)
    nib.save(nib.Nifti1Image(blob_volume((26, 30, 22)).array, aff), path)
    return path


def test_world_click_and_stored_voxel_click_give_the_same_mask(tmp_path: Path) -> None:
    path = _oblique(tmp_path / "oblique.nii.gz")
    volume = load_volume(path, modality="CT")
    model = tiny_model()
    plan_before = asdict(model.preprocess_plan)
    predictor = SegPredictor(model)
    predictor.set_volume(volume)
    stored = np.array([[13.0, 15.0, 11.0], [2.0, 27.0, 19.0]])
    world = nib.affines.apply_affine(nib.load(path).affine, stored)
    r_vox = predictor.predict(points=stored, labels=[1, 0], multimask=False)
    r_mm = predictor.predict(points=world, labels=[1, 0], coords="world", multimask=False)
    assert r_vox.mask.any()
    np.testing.assert_array_equal(r_vox.mask, r_mm.mask)
    # the click lands where nibabel says: the stored voxel under it is the canonical voxel the geometry names
    canon = np.rint(predictor.geometry.convert(world[0], "world", "canonical")).astype(int)
    assert volume.array[tuple(canon)] == np.asarray(nib.load(path).dataobj)[13, 15, 11]
    assert asdict(model.preprocess_plan) == plan_before and asdict(predictor.plan) == plan_before
