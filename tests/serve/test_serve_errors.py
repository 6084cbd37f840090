"""Error bodies of the service (issue 15 item 3): no DICOM element value, no server temp path."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Annotated

import pydicom
import pytest
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.testclient import TestClient

from radfm.errors import InputError
from radfm.serve.app import ServeSettings, create_app
from radfm.serve.errors import scrub
from radfm.serve.uploads import RequestUploads, save_upload_to_tmp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "phi"))
from canary import Canary, build_series

KEY = "errors-test-key-0123456789"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Canary]:
    folder = tmp_path_factory.mktemp("canary") / "series"
    return folder, build_series(folder, n=3)


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"series/{f.name}")
    return buf.getvalue()


def _leaky_router() -> APIRouter:
    """A route whose error quotes the temp path and header values, as a careless loader would."""
    router = APIRouter()

    @router.post("/v1/test/leak")
    def leak(file: Annotated[UploadFile, File()], count: Annotated[int, Form()] = 1) -> dict:
        path = save_upload_to_tmp(file)
        first = sorted(path.rglob("*.dcm"))[0]
        ds = pydicom.dcmread(first)
        raise InputError(f"{path} ({first}): bad value {ds.PatientName} from {ds.InstitutionName}.",
                         f"Check {first.name} in {path.name}.")

    return router


@pytest.fixture
def client(tmp_path: Path):
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path, routers=()), backend=None)
    app.include_router(_leaky_router())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_error_body_withholds_header_values_and_temp_paths(client, series, tmp_path: Path) -> None:
    folder, c = series
    r = client.post("/v1/test/leak", headers=AUTH, files={"file": ("ct-study.zip", _zip(folder))})
    assert r.status_code == 400
    text = r.text
    assert c.find(text) == [], c.find(text)
    assert str(tmp_path) not in text and "radfm-upload-" not in text and "/tmp/" not in text
    assert "ct-study.zip" in r.json()["detail"] and "slice000.dcm" in r.json()["hint"]
    assert list(tmp_path.iterdir()) == []  # the upload kept for redaction is gone after the response


def test_validation_error_does_not_echo_the_input(client, series) -> None:
    folder, c = series
    data = (folder / "slice000.dcm").read_bytes().decode("latin-1")
    r = client.post("/v1/test/leak", headers=AUTH, data={"count": data[:20000]},
                    files={"file": ("x.dcm", b"x")})
    assert r.status_code == 422
    assert c.find(r.text) == [] and "input" not in r.json()["detail"][0]


def test_scrub_replaces_own_names_and_keeps_words(tmp_path: Path, series) -> None:
    folder, c = series
    up = tmp_path / "radfm-upload-abc123"
    (up / "series").mkdir(parents=True)
    (up / "series" / "s.dcm").write_bytes((folder / "slice000.dcm").read_bytes())
    uploads = RequestUploads(folders=[up], names={up: "study.zip"})
    ds = pydicom.dcmread(folder / "slice000.dcm")
    msg = f"s.dcm in series looks like DICOM but cannot be read; {ds.PatientID} at {up}/series/s.dcm"
    out = scrub(msg, uploads)
    assert c.find(out) == [] and "radfm-upload" not in out
    assert out.startswith("s.dcm in study.zip looks like DICOM but cannot be read;"), out
    assert out.endswith("study.zip/s.dcm"), out
    assert scrub("image.dcm is not a DICOM file", RequestUploads(folders=[up], names={up: "a b.dcm"})) == \
        "a b.dcm is not a DICOM file"
