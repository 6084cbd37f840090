"""``POST /v1/segment`` through the real app (API key, upload handling) with the shipped model."""

from __future__ import annotations

import base64
import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import ndimage

from radfm.data.phantom import make_phantom
from radfm.io import save_volume
from radfm.serve.app import ServeSettings, create_app

KEY = "seg-test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    """A CT phantom written LPS-oriented on disk (so the file's voxel indices differ from canonical ones)."""
    case = make_phantom(1, modality="CT", shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0), n_lesions=1)
    folder = tmp_path_factory.mktemp("seg")
    ras = nib.load(save_volume(case.image, folder / "ct.nii.gz"))
    to_lps = np.array([[0, -1], [1, -1], [2, 1]])  # flip the first two axes: RAS → LPS storage
    out = folder / "ct_lps.nii.gz"
    nib.save(ras.as_reoriented(to_lps), out)
    labels = nib.Nifti1Image(case.labels.array.astype(np.uint8), ras.affine).as_reoriented(to_lps)
    return out, np.asarray(labels.dataobj) == 4  # the heart, on the LPS file's own voxel grid


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path_factory.mktemp("up"),
                                   routers=("segmentation",)), backend=None)
    with TestClient(app) as c:
        yield c


def test_segment_a_click_returns_the_mask_in_the_upload_space(client, phantom_file) -> None:
    path, heart = phantom_file
    c = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(heart))), heart.shape)
    with open(path, "rb") as fh:
        r = client.post("/v1/segment", headers=AUTH, files={"file": ("ct.nii.gz", fh)},
                        data={"points": ",".join(map(str, c))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "mask" not in body and body["is_research_output"] is True  # no server paths leak
    mask_img = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["mask_nifti_gz_b64"])))
    assert np.allclose(mask_img.affine, nib.load(path).affine)  # the upload's own grid
    mask = np.asarray(mask_img.dataobj) > 0
    # one click on a big organ: the shipped model under-segments (MODEL_CARD.md) but stays inside it
    assert mask.sum() > 0 and (mask & heart).sum() / mask.sum() >= 0.9
    assert body["voxels"] == int(mask.sum()) and 0 <= body["expected_dice"] <= 1
    assert body["grid_mm"] in (2.0, 3.0, 4.0, 5.0)  # the shipped model's grids; the answering one is reported


@pytest.mark.parametrize(("data", "status", "words"), [
    ({}, 400, "empty prompt"),
    ({"points": "1,2"}, 400, "3 comma-separated"),
    ({"points": "500,2,3"}, 400, "outside"),
    ({"box": "10,10,10,10,20,20"}, 400, "zero"),
    ({"points": "10,10,10", "return_mask": "png"}, 400, "return_mask"),
    ({"points": "10,10,10", "return_mask": "dicom-seg"}, 400, "DICOM series"),
])
def test_bad_prompts_are_400_with_a_reason(client, phantom_file, data, status, words) -> None:
    path, _ = phantom_file
    with open(path, "rb") as fh:
        r = client.post("/v1/segment", headers=AUTH, files={"file": ("ct.nii.gz", fh)}, data=data)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()


def test_segment_needs_the_api_key_and_an_image(client) -> None:
    r = client.post("/v1/segment", files={"file": ("x.nii", io.BytesIO(b"0" * 400))}, data={"points": "1,2,3"})
    assert r.status_code == 401
    r = client.post("/v1/segment", headers=AUTH, files={"file": ("x.txt", io.BytesIO(b"hello" * 200))},
                    data={"points": "1,2,3"})
    assert r.status_code == 415
