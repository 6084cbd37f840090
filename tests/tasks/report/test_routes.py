"""``POST /v1/report`` through the real app, the real upload handling and the transformers backend."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from radfm.data.phantom import make_phantom
from radfm.io import save_volume

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def client(tiny_vlm_dir):
    from fastapi.testclient import TestClient

    from radfm.serve.app import ServeSettings, create_app
    from radfm.serve.backends import TransformersBackend

    backend = TransformersBackend(tiny_vlm_dir / "llm")
    app = create_app(ServeSettings(api_keys=(KEY,), routers=("report",)), backend=backend,
                     model_dirs={"report": tiny_vlm_dir})
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory) -> bytes:
    case = make_phantom(2, shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0))
    p = save_volume(case.image, tmp_path_factory.mktemp("img") / "ct.nii.gz")
    return p.read_bytes()


def test_image_and_findings_give_a_linked_draft(client, nifti_bytes) -> None:
    findings = json.dumps([{"finding": "nodule", "organ": "lung", "size_mm": 8, "location": "right lower lobe",
                            "label_id": 12, "bbox_ijk": [1, 2, 3, 4, 5, 6]}])
    r = client.post("/v1/report", headers=AUTH, files={"file": ("x.bin", nifti_bytes)},
                    data={"findings": findings, "max_new_tokens": "8"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["is_draft"] is True and d["marker"] == "DRAFT — for review by a radiologist"
    assert d["source"] == "image+findings" and d["input_check"]["ok"] is True
    assert set(d) >= {"findings", "impression", "sentences", "disclaimer", "model", "timing_s"}
    assert d["model"]["backend"] == "transformers" and d["model"]["kind"] == "vlm"


def test_findings_only_and_errors(client) -> None:
    r = client.post("/v1/report", headers=AUTH, data={"findings": "Cardiomegaly; Opacity/lung/base/left",
                                                      "max_new_tokens": "4"})
    assert r.status_code == 200 and r.json()["source"] == "findings"
    assert client.post("/v1/report", headers=AUTH, data={}).status_code == 400
    assert client.post("/v1/report", headers=AUTH, data={"findings": "[{\"organ\": 1}]"}).status_code == 400
    assert client.post("/v1/report", headers=AUTH, data={"findings": "A", "max_new_tokens": "100000"}).status_code == 400
    bad = client.post("/v1/report", headers=AUTH, files={"file": ("x.nii", b"not an image at all")})
    assert bad.status_code == 415
    assert client.post("/v1/report", data={"findings": "A"}).status_code == 401  # the app's API key guard


def test_zipped_single_slice_dicom_is_read_and_checked(client) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(pydicom_data.get_testdata_file("CT_small.dcm"), "series/1.dcm")
    r = client.post("/v1/report", headers=AUTH, files={"file": ("s.zip", buf.getvalue())},
                    data={"max_new_tokens": "4"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["source"] == "image" and d["input_check"]["ok"] is True
    # one 5 mm slice of 0.66 mm pixels: the check warns about the anisotropy instead of failing silently
    assert "anisotropic" in {f["code"] for f in d["input_check"]["findings"]}


def test_zipped_dicom_series_gives_a_draft_and_its_dicom_sr(ct_dicom_series) -> None:
    """A real CT series in, the starter model's draft out as JSON and as a DICOM SR of the same study."""
    import base64

    import pydicom
    from fastapi.testclient import TestClient

    from radfm.serve.app import ServeSettings, create_app
    from radfm.serve.backends import TransformersBackend
    from radfm.tasks.report.model import default_model_dir

    series = ct_dicom_series
    buf = io.BytesIO()
    files = sorted(p for p in series.iterdir() if p.is_file())
    with zipfile.ZipFile(buf, "w") as z:
        for p in files:
            z.write(p, f"series/{p.name}")
    starter = default_model_dir()
    app = create_app(ServeSettings(api_keys=(KEY,), routers=("report",)),
                     backend=TransformersBackend(starter / "llm"), model_dirs={"report": starter})
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/v1/report", headers=AUTH, files={"file": ("s.zip", buf.getvalue())},
                    data={"max_new_tokens": "64", "return_sr": "true"})
    assert r.status_code == 200, r.text
    sr = pydicom.dcmread(io.BytesIO(base64.b64decode(r.json()["dicom_sr_b64"])))
    src = pydicom.dcmread(files[0])
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    # an SR needs the series: asked for with a NIfTI upload it is a clear 400
    r = client.post("/v1/report", headers=AUTH, files={"file": ("x.nii.gz", b"")}, data={"return_sr": "true"})
    assert r.status_code in (400, 415)


def test_route_tokens_match_the_model_generate(tiny_vlm_dir, nifti_bytes, tmp_path) -> None:
    """Backend (LLM folder + prompt embeddings) and RadFMForReportGeneration.generate agree."""
    from types import SimpleNamespace

    from radfm.io import load_volume
    from radfm.serve.backends import TransformersBackend
    from radfm.tasks.report.drafting import prepare_inputs
    from radfm.tasks.report.model import load_report_model
    from radfm.tasks.report.routes import draft_with_backend

    (tmp_path / "ct.nii.gz").write_bytes(nifti_bytes)
    vol = load_volume(tmp_path / "ct.nii.gz")
    backend = TransformersBackend(tiny_vlm_dir / "llm")
    state = SimpleNamespace(extras={}, model_dir=lambda name: tiny_vlm_dir, require_backend=lambda: backend)
    out = draft_with_backend(state, vol, None, max_new_tokens=6)
    rm = load_report_model(tiny_vlm_dir)
    inp = prepare_inputs(rm, vol, None)
    own = rm.model.generate(inp["input_ids"], pixel_values=inp["pixel_values"], modality_ids=inp.get("modality_ids"),
                            max_new_tokens=6)
    ids = backend.generate([rm.model.prompt_embeds(inp["input_ids"], pixel_values=inp["pixel_values"],
                                                   modality_ids=inp.get("modality_ids"))], max_new_tokens=6)[0]
    assert own[0].tolist()[: len(ids)] == ids
    assert out["source"] == "image" and isinstance(torch.tensor(ids), torch.Tensor)
