"""SegPredictor: embedding cache, coordinates (voxel vs world through an oblique affine), bad prompts,
windows for large volumes, sliding-window boxes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from segtest_utils import blob_volume, tiny_model

from radfm.errors import InputError
from radfm.io import (
    canonical_index_to_native,
    canonical_index_to_world,
    load_volume,
    native_index_to_canonical,
)
from radfm.tasks.segmentation.predictor import SegPredictor


def _count_encoder_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_embedding_is_computed_once_for_many_prompts() -> None:
    model = tiny_model()
    calls = _count_encoder_calls(model)
    predictor = SegPredictor(model)
    volume = blob_volume()
    predictor.set_volume(volume)
    assert calls[0] == 1
    r1 = predictor.predict(points=[[15, 14, 13]], labels=[1])
    r2 = predictor.predict(points=[[15, 14, 13], [2, 2, 2]], labels=[1, 0], mask_input=r1, multimask=False)
    assert calls[0] == 1  # set_volume once, predict twice: the encoder ran once
    assert r1.mask.shape == volume.shape and r1.mask.dtype == np.uint8
    assert r1.num_candidates == 1 and r2.num_candidates == 1  # one mask per prompt set
    assert 0.0 <= r1.score <= 1.0
    assert r1.low_res_logits is not None and r1.low_res_logits.shape[:2] == (1, 1)
    assert all(c.shape == volume.shape for c in r1.candidates)
    np.testing.assert_array_equal(r1.candidate(r1.best_index), r1.mask)


def _oblique_nifti(path: Path) -> Path:
    """Oblique (20°/−20°), permuted and flipped axes, anisotropic voxels: the hard case for click conversion."""
    ax, ay = np.deg2rad(20), np.deg2rad(-20)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    aff = np.eye(4)
    aff[:3, :3] = rx @ ry @ np.array([[0, 0, -2.4], [-1.8, 0, 0], [0, 3.0, 0]])
    aff[:3, 3] = (-5.0, 17.0, 60.0)
    data = blob_volume((26, 30, 22)).array
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def test_click_as_native_voxel_and_as_world_mm_lands_on_the_same_voxel(tmp_path: Path) -> None:
    volume = load_volume(_oblique_nifti(tmp_path / "oblique.nii.gz"), modality="CT")
    predictor = SegPredictor(tiny_model())
    predictor.set_volume(volume)
    native = np.array([[12.0, 9.0, 7.0], [3.0, 25.0, 18.0]])
    world = nib.affines.apply_affine(nib.load(tmp_path / "oblique.nii.gz").affine, native)
    canon_from_voxel = predictor.geometry.checked_points(native, "voxel")
    canon_from_world = predictor.geometry.checked_points(world, "world")
    np.testing.assert_allclose(canon_from_voxel, canon_from_world, atol=1e-6)
    np.testing.assert_allclose(canon_from_voxel, native_index_to_canonical(native, volume))
    # the stored voxel value under the click is the canonical array's value there
    c = np.rint(canon_from_voxel).astype(int)
    stored = np.asarray(nib.load(tmp_path / "oblique.nii.gz").dataobj)
    assert volume.array[tuple(c[0])] == stored[12, 9, 7]
    r_vox = predictor.predict(points=native, labels=[1, 0], multimask=False)
    r_mm = predictor.predict(points=world, labels=[1, 0], coords="world", multimask=False)
    np.testing.assert_array_equal(r_vox.mask, r_mm.mask)
    # and back: canonical → native / world agree with the file's affine
    np.testing.assert_allclose(canonical_index_to_native(canon_from_voxel, volume), native, atol=1e-9)
    np.testing.assert_allclose(canonical_index_to_world(canon_from_voxel, volume), world, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "empty prompt"),
        ({"points": [[5, 5, 40]]}, r"outside the image: axis 2 must be in 0\.\.25"),
        ({"points": [[-1, 5, 5]]}, r"axis 0 must be in 0\.\.29"),
        ({"points": [[5, np.nan, 5]]}, "NaN"),
        ({"points": [[5, 5, 5]], "labels": [2]}, "must be 1 .foreground. or 0"),
        ({"points": [[5, 5, 5]], "labels": [1, 0]}, "1 point.s. but 2 label"),
        ({"box": [4, 4, 4, 20, 4, 20]}, "zero size along canonical axis 1"),
        ({"box": [4, 4, 4, 20, 20]}, "a box needs 6 numbers"),
        ({"points": [[1000.0, 0, 0]], "coords": "world"}, r"mm \(world RAS\+\) is outside the image"),
    ],
)
def test_bad_prompts_raise_clear_input_errors(kwargs: dict, match: str) -> None:
    predictor = SegPredictor(tiny_model())
    predictor.set_volume(blob_volume())
    with pytest.raises(InputError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_volume_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no volume set"):
        SegPredictor(tiny_model()).predict(points=[[1, 2, 3]])


def test_large_volume_is_cropped_to_a_window_around_the_prompt() -> None:
    """Bounded memory: the encoder sees one window, results are pasted back on the full grid."""
    model = tiny_model(window=32, spacing=2.0)
    shapes: list[tuple[int, ...]] = []
    model.encoder.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    predictor = SegPredictor(model)
    volume = blob_volume((90, 24, 20))  # 90 voxels along x > the 32-voxel window
    predictor.set_volume(volume)
    assert shapes == []  # too big for one window: embedded lazily around the first prompt
    r = predictor.predict(points=[[70, 12, 10]])
    # (D, H, W) = canonical (z, y, x) padded to the 8-voxel patch; only x is cropped to the window
    assert shapes == [(1, 1, 24, 24, 32)]
    x0, x1 = r.window[2]
    assert (x1 - x0) == 32 and x0 <= 70 < x1
    assert r.mask.shape == volume.shape and not r.mask[: x0 - 1].any()  # nothing outside the window
    predictor.predict(points=[[72, 11, 10]])  # still inside the window: no new embedding
    assert len(shapes) == 1
    predictor.predict(points=[[10, 12, 10]])  # elsewhere: a new window
    assert len(shapes) == 2


def test_box_larger_than_the_window_uses_a_sliding_window() -> None:
    model = tiny_model(window=32)
    shapes: list[tuple[int, ...]] = []
    model.encoder.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    predictor = SegPredictor(model)
    volume = blob_volume((90, 30, 30))
    predictor.set_volume(volume)
    r = predictor.predict(box=[5, 3, 3, 85, 26, 26])
    assert len(shapes) >= 3  # several tiles along x
    assert r.mask.shape == volume.shape and r.num_candidates == 1 and r.low_res_logits is None


def test_previous_mask_moves_with_the_window() -> None:
    """A click outside the current window moves it; the previous mask is re-cut, not lost."""
    predictor = SegPredictor(tiny_model(window=32))
    predictor.set_volume(blob_volume((90, 30, 30)))
    r1 = predictor.predict(points=[[60, 15, 15]])
    new = ((0, 32), (0, 32), (30, 62))
    shifted = predictor._shift_mask(r1.low_res_logits, r1.window, new, predictor._embedding(new))
    dx = r1.window[2][0] - 30  # the previous mask is kept at full model resolution
    assert shifted.shape == r1.low_res_logits.shape
    torch.testing.assert_close(shifted[..., dx:], r1.low_res_logits[..., : shifted.shape[-1] - dx])
    r2 = predictor.predict(points=[[60, 15, 15], [5, 15, 15]], labels=[1, 0], mask_input=r1, multimask=False)
    assert r2.window != r1.window and r2.mask.shape == r1.mask.shape


def test_window_logits_map_back_like_restore_to_input() -> None:
    """The window-wise mapping back to the volume equals the plan's own restore_to_input (whole grid)."""
    from radfm.io.volume import Volume
    from radfm.preprocess.plan import restore_to_input

    model = tiny_model(window=64, spacing=2.0)
    predictor = SegPredictor(model)
    vol = blob_volume((37, 29, 23))
    vol = Volume(array=vol.array, affine=np.diag([1.3, 1.7, 3.1, 1.0]), modality="CT")
    predictor.set_volume(vol)
    prepared = predictor.prepared
    logits = torch.randn(1, *prepared.tensor.shape[1:])
    logits = torch.nn.functional.avg_pool3d(logits[None], 3, 1, 1)[0]  # smooth, like real logits
    full = tuple((0, s) for s in prepared.tensor.shape[1:])
    mine = predictor.logits_to_canonical(logits[0], full)
    ref = restore_to_input(logits, prepared, kind="label")
    assert (mine != ref).mean() < 1e-3  # identical up to float rounding at |logit| ≈ 0
    # a window over part of the grid (model x from 8 on) fills exactly the canonical voxels whose centres
    # it covers, with the same values (except within half a model voxel of its edge, where it clamps)
    part = ((0, full[0][1]), (0, full[1][1]), (8, full[2][1]))
    sub = predictor.logits_to_canonical(logits[0][:, :, 8:], part)
    scale = prepared.resampled_shape[2] / vol.shape[0]
    first = int(np.ceil(8 / scale - 0.5))  # first canonical x whose centre maps to model x >= 7.5
    assert not sub[:first].any()
    inner = int(np.ceil(8.5 / scale - 0.5))
    assert (sub[inner:] != ref[inner:]).mean() < 1e-3
