"""Dataset indexing (MSD, nnU-Net, manifests), phantom datasets and patch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from radfm.data.datasets import load_case, load_cases, phantom_dataset
from radfm.data.patches import (
    PatchDataset,
    canonical_to_model,
    extract_patch,
    model_to_canonical,
    sample_patch_centers,
)
from radfm.errors import InputError

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _nii(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, affine).to_filename(str(path))


def _image(seed: int, shape=(10, 12, 8)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 100, shape).astype(np.float32)


def _label(shape=(10, 12, 8)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:6, 4:8, 2:5] = 1
    return lab


def _msd(root: Path, n: int = 3) -> Path:
    training = []
    for i in range(n):
        _nii(root / "imagesTr" / f"liver_{i:03d}.nii.gz", _image(i))
        _nii(root / "labelsTr" / f"liver_{i:03d}.nii.gz", _label())
        training.append({"image": f"./imagesTr/liver_{i:03d}.nii.gz", "label": f"./labelsTr/liver_{i:03d}.nii.gz"})
    _nii(root / "imagesTs" / "liver_100.nii.gz", _image(100))
    meta = {"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
            "training": training, "test": ["./imagesTs/liver_100.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _nnunet(root: Path) -> Path:
    for case in ("BRATS_001", "BRATS_002"):
        for ch in range(2):
            _nii(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", _image(ch))
        _nii(root / "labelsTr" / f"{case}.nii.gz", _label())
    meta = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "tumor": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout(tmp_path):
    ds = load_cases(_msd(tmp_path / "Task03_Liver"))
    assert ds.num_rows == 3 and ds.column_names == ["case_id", "image", "label", "report"]
    assert ds["case_id"] == ["liver_000", "liver_001", "liver_002"]
    assert all(len(r) == 1 and Path(r[0]).is_file() for r in ds["image"])
    assert all(Path(p).is_file() for p in ds["label"]) and ds["report"] == [None] * 3
    assert json.loads(ds.info.description)["layout"] == "msd"
    case = load_case(ds[1])
    assert case["image"].shape == (10, 12, 8) and case["label"].shape == (10, 12, 8)
    assert case["image"].spacing == pytest.approx((1.5, 1.5, 2.0))
    assert int(case["label"].array.sum()) == int(_label().sum())
    test = load_cases(tmp_path / "Task03_Liver", split="test")
    assert test["case_id"] == ["liver_100"] and test["label"] == [None]


def test_nnunet_layout_groups_channels(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_BraTS")
    ds = load_cases(root)
    assert ds["case_id"] == ["BRATS_001", "BRATS_002"]
    assert [Path(p).name for p in ds[0]["image"]] == ["BRATS_001_0000.nii.gz", "BRATS_001_0001.nii.gz"]
    assert Path(ds[0]["label"]).name == "BRATS_001.nii.gz"
    desc = json.loads(ds.info.description)
    assert desc["layout"] == "nnunet" and desc["labels"] == {"background": 0, "tumor": 1}
    case = load_case(ds[0])
    assert case["image"].array.shape == (10, 12, 8, 2)
    (root / "imagesTr" / "BRATS_002_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"BRATS_002.*missing channel"):
        load_cases(root)


def test_csv_and_json_manifests(tmp_path):
    _nii(tmp_path / "img" / "a.nii.gz", _image(1))
    _nii(tmp_path / "img" / "b.nii.gz", _image(2))
    _nii(tmp_path / "seg" / "a.nii.gz", _label())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "b.txt").write_text("No acute abnormality.\n")
    (tmp_path / "cases.csv").write_text(
        "image,label,report\n"
        "img/a.nii.gz,seg/a.nii.gz,A 2.3 cm hypodense lesion in the liver.\n"
        "img/b.nii.gz,,reports/b.txt\n"
    )
    ds = load_cases(tmp_path / "cases.csv")
    assert ds["case_id"] == ["a", "b"]
    assert ds["label"][1] is None and Path(ds["label"][0]).is_file()
    assert ds["report"] == ["A 2.3 cm hypodense lesion in the liver.", "No acute abnormality."]
    manifest = [{"case_id": "x1", "image": ["img/a.nii.gz", "img/b.nii.gz"], "label": "seg/a.nii.gz"}]
    (tmp_path / "sub").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": manifest}))
    js = load_cases(tmp_path)  # a folder holding manifest.json
    assert js["case_id"] == ["x1"] and len(js[0]["image"]) == 2
    assert load_case(js[0])["image"].array.shape == (10, 12, 8, 2)


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        load_cases(tmp_path / "empty")
    for layout in ("Decathlon", "nnU-Net", "manifest"):
        assert layout in str(err.value)
    (tmp_path / "m.csv").write_text("image,label\nmissing_img.nii.gz,missing_seg.nii.gz\n")
    with pytest.raises(InputError, match=r"missing_img\.nii\.gz.*missing_seg\.nii\.gz"):
        load_cases(tmp_path / "m.csv")
    (tmp_path / "nocol.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="'image' column"):
        load_cases(tmp_path / "nocol.csv")
    _nii(tmp_path / "i.nii.gz", _image(0))
    _nii(tmp_path / "l.nii.gz", _label((10, 12, 9)))
    _nii(tmp_path / "l2.nii.gz", _label(), affine=np.diag([1.0, 1.5, 2.0, 1.0]))
    (tmp_path / "g.csv").write_text("case_id,image,label\nc1,i.nii.gz,l.nii.gz\nc2,i.nii.gz,l2.nii.gz\n")
    ds = load_cases(tmp_path / "g.csv")
    with pytest.raises(InputError, match=r"case c1: label grid \(10, 12, 9\)"):
        load_case(ds[0])
    with pytest.raises(InputError, match="case c2: label grid"):
        load_case(ds[1])


def test_phantom_dataset_is_deterministic_with_json_findings():
    ds = phantom_dataset(3, seed=1, shape=(32, 32, 32))
    again = phantom_dataset(2, seed=1, shape=(32, 32, 32))
    assert ds.num_rows == 3
    np_ds, np_again = ds.with_format("numpy"), again.with_format("numpy")
    for i in range(2):
        assert np.array_equal(np_ds[i]["image"], np_again[i]["image"])
        assert np.array_equal(np_ds[i]["labels"], np_again[i]["labels"])
        assert ds[i]["report"] == again[i]["report"] and ds[i]["findings"] == again[i]["findings"]
    row = np_ds[0]
    assert row["image"].dtype == np.float32 and row["image"].shape == (32, 32, 32)
    assert ds.features["labels"].dtype == "uint8"  # stored as uint8; the numpy formatter widens to int64
    findings = json.loads(ds[0]["findings"])
    assert all(f["label_id"] in np.unique(row["labels"]) for f in findings)
    assert json.loads(ds[0]["report_json"])["findings_text"] in ds[0]["report"]
    assert "report" not in phantom_dataset(1, shape=(24, 24, 24), with_reports=False).column_names
    assert not np.array_equal(phantom_dataset(1, seed=2, shape=(32, 32, 32)).with_format("numpy")[0]["image"],
                              row["image"])


# --- patches -------------------------------------------------------------------------------

def test_axis_order_conversion_round_trips():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert canonical_to_model(a).shape == (4, 3, 2)
    assert canonical_to_model(a)[3, 2, 1] == a[1, 2, 3]
    assert np.array_equal(model_to_canonical(canonical_to_model(a)), a)
    v = np.zeros((2, 3, 4, 5))  # Volume layout (X, Y, Z, C)
    assert canonical_to_model(v).shape == (5, 4, 3, 2)
    assert canonical_to_model(np.zeros((5, 2, 3, 4)), channels="first").shape == (5, 4, 3, 2)
    assert model_to_canonical(torch.zeros(5, 4, 3, 2)).shape == (2, 3, 4, 5)


def test_extract_patch_pads_outside_the_volume():
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    p = extract_patch(a, (0, 1, 1), (4, 3, 3), pad_value=-1)
    assert p.shape == (4, 3, 3)
    assert (p[:2] == -1).all() and np.array_equal(p[2:], a[:2])
    assert extract_patch(a[None], (1, 1, 1), (5, 5, 5)).shape == (1, 5, 5, 5)


def test_sample_patch_centers_handles_empty_and_small_volumes():
    rng = np.random.default_rng(0)
    c = sample_patch_centers(np.zeros((20, 20, 20), np.uint8), (8, 8, 8), 50, rng=rng)
    assert c.shape == (50, 3) and c.min() >= 4 and c.max() <= 16
    small = np.zeros((5, 20, 6), np.uint8)
    small[2, 10, 3] = 1
    c = sample_patch_centers(small, (8, 8, 8), 20, fg_fraction=1.0, rng=rng)
    for centre in c:
        patch = extract_patch(small, centre, (8, 8, 8))
        assert patch.shape == (8, 8, 8) and patch.sum() == 1  # the volume fits, so fg is always in


def test_foreground_oversampling_fraction():
    lab = np.zeros((64, 64, 64), np.uint8)
    lab[40:44, 10:14, 50:54] = 2  # tiny structure: random patches rarely hit it
    rng = np.random.default_rng(1)
    centres = sample_patch_centers(lab, (16, 16, 16), 400, fg_fraction=0.33, rng=rng)
    hit = np.mean([extract_patch(lab, c, (16, 16, 16)).any() for c in centres])
    assert 0.28 < hit < 0.55


def test_patch_dataset_from_arrays_phantoms_and_paths(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(20, 24, 28)).astype(np.float32), _label((20, 24, 28))) for _ in range(3)]
    pds = PatchDataset(pairs, patch_size=(8, 16, 12), patches_per_case=4, seed=0)
    items = list(pds)
    assert len(items) == len(pds) == 12
    assert items[0]["image"].shape == (1, 8, 16, 12) and items[0]["image"].dtype == torch.float32
    assert items[0]["label"].shape == (1, 8, 16, 12) and items[0]["label"].dtype == torch.int64
    again = list(PatchDataset(pairs, patch_size=(8, 16, 12), patches_per_case=4, seed=0))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(items, again))
    pds.set_epoch(1)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(items, list(pds)))
    loader = torch.utils.data.DataLoader(pds, batch_size=4)
    assert next(iter(loader))["image"].shape == (4, 1, 8, 16, 12)

    phantoms = phantom_dataset(2, shape=(32, 32, 32))
    pp = list(PatchDataset(phantoms, (16, 16, 16), 3, seed=1, transform=lambda s: {**s, "seen": True}))
    assert len(pp) == 6 and pp[0]["seen"] and pp[0]["image"].shape == (1, 16, 16, 16)

    ds = load_cases(_nnunet(tmp_path / "nn"))
    multi = list(PatchDataset(ds, (4, 6, 6), 2, seed=0, fg_fraction=1.0))
    assert multi[0]["image"].shape == (2, 4, 6, 6)
    assert all(int(m["label"].sum()) > 0 for m in multi)


def test_patch_dataset_output_is_model_order():
    """A marker at canonical (x, y, z) must appear at model (z, y, x)."""
    img = np.zeros((10, 12, 14), np.float32)
    img[7, 3, 11] = 1.0
    lab = (img > 0).astype(np.uint8)
    (s,) = list(PatchDataset([(img, lab)], (14, 12, 10), 1, seed=0, fg_fraction=1.0))
    assert s["image"].shape == (1, 14, 12, 10)
    assert s["image"][0, 11, 3, 7] == 1.0 and s["label"][0, 11, 3, 7] == 1
