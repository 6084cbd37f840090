"""``POST /v1/synthesize``: the same answer as the API, in the upload's space; clear 400s."""

from __future__ import annotations

import base64

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient

from radfm.io import load_volume
from radfm.serve.app import ServeSettings, create_app
from radfm.tasks.synthesis import synthesize
from radfm.tasks.synthesis.data import phantom_hu

KEY = "synth-route-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}


def test_synthesize_route_answers_like_the_api_in_the_upload_space(tmp_path, tiny) -> None:
    tiny.save_pretrained(tmp_path / "model")
    ct = phantom_hu(2, shape=(40, 36, 10), spacing=(1.0, 1.0, 2.5)).array
    affine = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])  # LPS-like
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct[::-1, ::-1].astype(np.float32).copy(), affine), str(src))
    (tmp_path / "up").mkdir()
    settings = ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path / "up", routers=("synthesis",))
    with TestClient(create_app(settings, backend=None, model_dirs={"synthesis": tmp_path / "model"})) as c:
        with open(src, "rb") as fh:
            r = c.post("/v1/synthesize", headers=AUTH, files={"file": ("ct.nii.gz", fh)}, data={"task": "lowdose"})
        assert r.status_code == 200, r.text
        body = r.json()
        with open(src, "rb") as fh:
            mr = c.post("/v1/synthesize", headers=AUTH, files={"file": ("ct.nii.gz", fh)}, data={"modality": "MR"})
        with open(src, "rb") as fh:
            bad = c.post("/v1/synthesize", headers=AUTH, files={"file": ("ct.nii.gz", fh)}, data={"task": "cbct2ct"})
    assert body["task"] == "lowdose" and body["quality"]["flag"] in ("ok", "review")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(base64.b64decode(body["image_nifti_gz_b64"]))
    img = nib.load(str(out))
    assert np.allclose(img.affine, affine) and img.shape == ct.shape
    expected = synthesize(load_volume(src), task="lowdose", model=tmp_path / "model").array
    np.testing.assert_allclose(load_volume(out).array, expected, atol=1e-3)
    assert mr.status_code == 400 and "MR" in mr.json()["detail"]
    assert bad.status_code == 400 and "lowdose" in bad.json()["hint"]
