"""``radfm segment`` end to end on a small NIfTI, and its errors (exit code 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from segtest_utils import blob_volume

from radfm.cli import main


@pytest.fixture()
def nifti(tmp_path: Path) -> Path:
    """A small CT-like NIfTI stored with flipped, permuted axes (so native ≠ canonical indices)."""
    vol = blob_volume((30, 28, 26))
    aff = np.array([[0, 0, -2.0, 30], [-2.0, 0, 0, 20], [0, 2.5, 0, -10], [0, 0, 0, 1]])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.array.transpose(1, 2, 0)), aff), path)
    return path


def test_cli_segments_a_nifti_and_writes_the_mask_in_the_input_space(
        nifti: Path, tmp_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(nifti), "--point", "14,13,15", "--point", "1,1,1,-", "--out", str(out),
               "--model", str(tmp_model_dir), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    ref, mask = nib.load(nifti), nib.load(out)
    assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)  # the input's own grid
    data = np.asarray(mask.dataobj)
    assert summary["voxels"] == int(data.sum())
    voxel_ml = abs(np.linalg.det(ref.affine[:3, :3])) / 1000
    assert summary["volume_ml"] == pytest.approx(data.sum() * voxel_ml, abs=1e-3)
    assert set(summary) >= {"score", "low_confidence", "bbox_voxel", "bbox_mm", "expected_dice", "prompts", "stability"}
    assert summary["grid_mm"] == 2.0  # the tiny model's plan grid (it has no extra inference spacings)
    assert summary["stability"] is None or 0.0 <= summary["stability"] <= 1.0
    if data.any():  # the bounding box is in the file's own (native) voxel indices
        idx = np.argwhere(data)
        assert summary["bbox_voxel"]["min"] == idx.min(0).tolist()
        assert summary["bbox_voxel"]["max"] == idx.max(0).tolist()
    assert summary["prompts"]["labels"] == [1, 0]


def test_cli_accepts_negative_world_coordinates(nifti: Path, tmp_model_dir: Path, tmp_path: Path) -> None:
    img = nib.load(nifti)
    x, y, z = nib.affines.apply_affine(img.affine, [14, 13, 15])
    assert x < 0 or y < 0 or z < 0  # the test is about a negative number after --point-mm
    rc = main(["segment", str(nifti), "--point-mm", f"{x:.3f},{y:.3f},{z:.3f}", "--out", str(tmp_path / "m.nii.gz"),
               "--model", str(tmp_model_dir)])
    assert rc == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "1,2,3,4,5"], "a box needs 6 comma-separated voxel indices"),
        (["--point", "1,2"], "a point needs 3 comma-separated numbers"),
        (["--point", "1,2,x"], "not a number"),
    ],
)
def test_malformed_prompt_values_exit_2_without_traceback(
        nifti: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(nifti), *args, "--out", str(tmp_path / "m.nii.gz")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "14,13,99"], "outside the image"),
        ([], "empty prompt"),
        (["--box", "3,3,3,3,20,20"], "zero size"),
    ],
)
def test_bad_prompts_exit_2_with_one_paragraph(
        nifti: Path, tmp_model_dir: Path, tmp_path: Path, args: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["segment", str(nifti), *args, "--out", str(tmp_path / "m.nii.gz"), "--model", str(tmp_model_dir)])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_missing_model_folder_is_a_config_error(nifti: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["segment", str(nifti), "--point", "1,1,1", "--out", str(tmp_path / "m.nii.gz"),
               "--model", str(tmp_path / "nope")])
    assert rc == 2 and "not a radfm segmentation model" in " ".join(capsys.readouterr().err.split())


def test_unknown_structure_name_lists_the_known_ones(nifti: Path, tmp_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["segment", str(nifti), "--structure", "pancreatic duct", "--out", str(tmp_path / "m.nii.gz"),
               "--model", str(tmp_model_dir)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "unknown structure name 'pancreatic duct'" in err and "liver" in err


def test_an_empty_mask_is_said_and_exits_non_zero_unless_allowed(tmp_path: Path, nifti: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from segtest_utils import tiny_model

    model = tiny_model()
    with torch.no_grad():
        model.decoder.head.bias.fill_(-1e4)  # every voxel background: the mask comes back empty
    model.save_pretrained(tmp_path / "empty_model")
    args = ["segment", str(nifti), "--point", "14,13,15", "--out", str(tmp_path / "m.nii.gz"),
            "--model", str(tmp_path / "empty_model"), "--json"]
    assert main(args) == 3
    captured = capsys.readouterr()
    assert "EMPTY" in captured.err and json.loads(captured.out)["empty"] is True
    assert main([*args, "--allow-empty"]) == 0


def test_dicom_seg_on_a_nifti_fails_before_the_model_runs(nifti: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["segment", str(nifti), "--point", "14,13,15", "--out", str(tmp_path / "m.nii.gz"),
               "--dicom-seg", str(tmp_path / "s.dcm"), "--model", str(tmp_path / "no_model_needed")])
    assert rc == 2 and "needs a DICOM series" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "m.nii.gz").exists()
