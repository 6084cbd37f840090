"""``radfm register`` end to end on small NIfTIs: outputs in the fixed image's space."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from radfm.cli import main
from radfm.data.deform import make_phantom_pair


def _save(array: np.ndarray, affine: np.ndarray, path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def test_cli_writes_outputs_with_the_fixed_affine(tmp_path, tiny_model, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    pair = make_phantom_pair(4, shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0), max_displacement_mm=4.0)
    # fixed stored LPS-like (x and y flipped) with an offset origin; moving axis-aligned elsewhere
    fixed_aff = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])
    moving_aff = np.array([[2.0, 0, 0, -22.0], [0, 2.0, 0, -32.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])
    f, m, lab = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", tmp_path / "labels.nii.gz"
    _save(pair.fixed.image.array[::-1, ::-1].copy(), fixed_aff, f)
    _save(pair.moving.image.array, moving_aff, m)
    _save(pair.moving.labels.array, moving_aff, lab)
    out_w, out_f, out_l = tmp_path / "w.nii.gz", tmp_path / "f.nii.gz", tmp_path / "wl.nii.gz"
    code = main(["register", str(f), str(m), "--out-warped", str(out_w), "--out-field", str(out_f),
                 "--labels", str(lab), "--out-labels", str(out_l), "--model", str(model_dir), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"folding_percent", "jacobian", "runtime_s"} <= set(summary)
    ref = nib.load(str(f))
    for path in (out_w, out_f, out_l):
        img = nib.load(str(path))
        assert np.allclose(img.affine, ref.affine), path.name
        assert img.shape[:3] == ref.shape
    field = nib.load(str(out_f))
    assert field.shape == (32, 32, 32, 3) and field.get_data_dtype() == np.float32
    labels = np.asarray(nib.load(str(out_l)).dataobj)
    assert labels.dtype.kind in "iu" and set(np.unique(labels)) <= set(np.unique(pair.moving.labels.array))
    # identity network: the warped labels are the moving labels placed by world coordinates,
    # i.e. the fixed voxel (i, j, k) at world (40 - 2i, 30 - 2j, ...) holds moving voxel (31 - i, 31 - j, k)
    moved = np.asarray(pair.moving.labels.array)[::-1, ::-1]
    assert np.array_equal(labels[:, :, :], moved)


def test_cli_error_is_one_paragraph(tmp_path, tiny_model, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    pair = make_phantom_pair(5, shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    f, lab = tmp_path / "fixed.nii.gz", tmp_path / "empty.nii.gz"
    _save(pair.fixed.image.array, np.diag([2.0, 2.0, 2.0, 1.0]), f)
    _save(np.zeros((32, 32, 32), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]), lab)
    code = main(["register", str(f), str(f), "--labels", str(lab), "--model", str(model_dir)])
    assert code == 2
    assert "empty" in capsys.readouterr().err
