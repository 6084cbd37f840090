"""``synthesize`` / ``radfm synthesize`` end to end: the input's own space, clear errors, the trainer CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from radfm.cli import main
from radfm.data.phantom import make_phantom
from radfm.errors import InputError
from radfm.io import Volume, load_volume
from radfm.tasks.synthesis import synthesize
from radfm.tasks.synthesis.data import phantom_hu


def _save(array: np.ndarray, affine: np.ndarray, path) -> None:
    img = nib.Nifti1Image(array.astype(np.float32), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def test_cli_writes_the_result_in_the_inputs_space(tmp_path, tiny, capsys) -> None:
    tiny.save_pretrained(tmp_path / "model")
    ct = phantom_hu(2, shape=(40, 36, 10), spacing=(1.0, 1.0, 2.5)).array
    affine = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])  # LPS-like
    src, out = tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz"
    _save(ct[::-1, ::-1].copy(), affine, src)
    code = main(["synthesize", str(src), "--task", "lowdose", "--out", str(out), "--model",
                 str(tmp_path / "model"), "--json", "--fp32"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "lowdose" and summary["quality"]["flag"] in ("ok", "review")
    assert {"network", "total"} <= set(summary["timings_s"])
    ref, img = nib.load(str(src)), nib.load(str(out))
    assert np.allclose(img.affine, ref.affine) and img.shape == ref.shape
    a, b = np.asarray(img.dataobj), np.asarray(ref.dataobj)
    diff = np.abs(a - b)
    assert 0.0 < float(diff.mean()) < 200.0  # changed (random head), but still the same image in HU
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9  # voxel-for-voxel in place (no flip, no shift)


def test_mr_and_nan_inputs_are_clear_errors(tiny) -> None:
    mr = make_phantom(1, modality="MR", shape=(32, 32, 16), spacing=(1.0, 1.0, 2.0)).image
    with pytest.raises(InputError, match=r"lowdose.*CT"):
        synthesize(mr, task="lowdose", model=tiny)
    ct = phantom_hu(1, shape=(32, 32, 16)).array.astype(np.float32)
    ct[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        synthesize(Volume(array=ct, affine=np.eye(4), modality="CT"), task="lowdose", model=tiny)


def test_cli_refuses_an_mr_with_one_line(tmp_path, tiny, capsys) -> None:
    tiny.save_pretrained(tmp_path / "model")
    mr = make_phantom(1, modality="MR", shape=(32, 32, 16), spacing=(1.0, 1.0, 2.0)).image
    _save(mr.array, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "mr.nii.gz")
    code = main(["synthesize", str(tmp_path / "mr.nii.gz"), "--out", str(tmp_path / "o.nii.gz"),
                 "--model", str(tmp_path / "model"), "--modality", "MR"])
    assert code != 0
    assert "CT" in capsys.readouterr().err and not (tmp_path / "o.nii.gz").exists()


def test_train_cli_few_steps_into_tmp_path(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(["train", "synthesis", "real=[]", "validation=[]", "phantoms=1", "encoder=null",
                 "decoder_channels=[4,4,4,4]", "window=[16,32,32]", "train.crop=[16,32,32]", "train.steps=3",
                 "train.progress=false", "views=90", "realisations=2", "cache_dir=null", f"output_dir={out}"])
    assert code == 0
    record = json.loads((out / "model" / "training.json").read_text())
    assert record["steps"] == 3 and record["banks"][0]["name"].startswith("phantom")
    from radfm.tasks.synthesis.model import RadFMSynthesis

    model = RadFMSynthesis.from_pretrained(out / "model")
    res = synthesize(load_volume_like(tmp_path), task="lowdose", model=model)
    assert res.array.shape == (32, 32, 16)


def load_volume_like(tmp_path) -> Volume:
    v = phantom_hu(4, shape=(32, 32, 16))
    _save(v.array, v.affine, tmp_path / "p.nii.gz")
    return load_volume(tmp_path / "p.nii.gz")
