"""Task adapters served on one shared encoder: one copy per base encoder, the right adapter per request."""

from __future__ import annotations

import base64
import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import radfm  # noqa: F401  (torchvision shim before peft)
from radfm.data.phantom import make_phantom
from radfm.io import save_like
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.serve.app import ServeSettings, create_app
from radfm.tasks.dense_segmentation.api import adapt
from radfm.tasks.dense_segmentation.checkpoint import load_adapted
from radfm.tasks.dense_segmentation.inference import predict_volume
from radfm.tasks.dense_segmentation.pool import AdapterPool
from radfm.tasks.dense_segmentation.train import AugmentConfig

SHAPE, SPACING = (32, 32, 32), (6.0, 6.0, 6.0)
KEY = "test-key-adapters"
AUTH = {"X-API-Key": KEY}


def _encoder(path, seed: int) -> str:
    torch.manual_seed(seed)
    RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    """Three LoRA adapters: liver and lungs on encoder A, liver on encoder B."""
    root = tmp_path_factory.mktemp("adapters")
    enc_a, enc_b = _encoder(root / "enc_a", 0), _encoder(root / "enc_b", 1)
    cases = [make_phantom(s, shape=SHAPE, spacing=SPACING, n_lesions=0) for s in range(3)]
    common = dict(data=cases[:2], shots=2, strategy="lora", steps=6, patch_size=(32, 32, 32), progress=False,
                  eval_cases=0, augment=AugmentConfig.none())
    out = {}
    for name, enc, labels in (("liver", enc_a, {5: "liver"}), ("lungs", enc_a, {2: "lungs", 3: "lungs"}),
                              ("liver_b", enc_b, {5: "liver"})):
        adapt(encoder=enc, label_names=labels, out_dir=root / name, **common)
        out[name] = root / name
    return {"dirs": out, "case": cases[2]}


def test_adapters_on_one_encoder_share_its_copy_and_answer_as_if_loaded_alone(adapters) -> None:
    dirs, volume = adapters["dirs"], adapters["case"].image
    pool = AdapterPool(dirs)
    assert pool.encoder_copies() == 2  # liver + lungs share encoder A; liver_b has its own
    shared = {d["name"]: d["encoder_shared_by"] for d in pool.describe()}
    assert shared == {"liver": 2, "lungs": 2, "liver_b": 1}
    alone = {n: predict_volume(*load_adapted(d)[:2], volume) for n, d in dirs.items()}
    assert not np.array_equal(alone["liver"], alone["lungs"])  # switching must matter
    for name in ("liver", "lungs", "liver", "liver_b", "lungs"):  # switch back and forth
        np.testing.assert_array_equal(pool.predict(name, volume), alone[name])


@pytest.fixture(scope="module")
def client(adapters, tmp_path_factory):
    settings = ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path_factory.mktemp("up"), routers=("dense_segmentation",),
                             task_adapters=tuple(adapters["dirs"].items()))
    with TestClient(create_app(settings, backend=None)) as c:
        yield c


def test_http_adapters_listed_and_segment_in_the_upload_space(client, adapters, tmp_path) -> None:
    listed = client.get("/v1/adapters", headers=AUTH).json()
    assert listed["encoder_copies"] == 2 and {a["name"] for a in listed["adapters"]} == {"liver", "lungs", "liver_b"}
    volume = adapters["case"].image
    path = save_like(volume.array, volume, tmp_path / "ct.nii.gz")
    expected = predict_volume(*load_adapted(adapters["dirs"]["lungs"])[:2], volume) > 0
    with open(path, "rb") as fh:
        r = client.post("/v1/adapters/lungs/segment", headers=AUTH, files={"file": ("ct.nii.gz", fh)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter"] == "lungs" and body["label"] == "lungs" and body["voxels"] == int(expected.sum()) > 0
    mask_file = tmp_path / "mask.nii.gz"
    mask_file.write_bytes(base64.b64decode(body["mask_nifti_gz_b64"]))
    assert gzip.open(mask_file).read(4)  # a gzip NIfTI
    img = nib.load(mask_file)
    np.testing.assert_allclose(img.affine, nib.load(path).affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj) > 0, expected)  # the file's grid is canonical here


def test_http_unknown_adapter_is_404_and_unknown_structure_400(client, adapters, tmp_path) -> None:
    volume = adapters["case"].image
    path = save_like(volume.array, volume, tmp_path / "ct.nii.gz")
    with open(path, "rb") as fh:
        r = client.post("/v1/adapters/spleen/segment", headers=AUTH, files={"file": ("ct.nii.gz", fh)})
    assert r.status_code == 404 and "liver" in r.json()["hint"]
    with open(path, "rb") as fh:
        r = client.post("/v1/adapters/liver/segment", headers=AUTH, files={"file": ("ct.nii.gz", fh)},
                        data={"structure": "spleen"})
    assert r.status_code == 400 and "unknown structure" in r.json()["detail"]
