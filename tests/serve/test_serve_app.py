"""The HTTP app: API key on every route, size limits, upload checks, errors as 4xx, no PHI in logs.

Uses FastAPI's TestClient with a fake LLM backend and a small router built like a task router
(upload → ``save_upload_to_tmp`` → ``load_volume`` → backend → text), so these tests need neither
vLLM nor the report model.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path
from typing import Annotated

import pytest
import torch
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.testclient import TestClient

import radfm
from radfm import registry
from radfm.errors import ConfigError
from radfm.serve import app as app_module
from radfm.serve.app import ServeSettings, ServeState, create_app
from radfm.serve.backends import UnknownAdapterError
from radfm.serve.security import load_api_keys
from radfm.serve.uploads import save_upload_to_tmp

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
REPORT_TEXT = "SECRETFINDING small left pleural effusion"
PATIENT = "SECRETPATIENT^JANE"


class FakeBackend:
    """Returns the id of the adapter (0 = base) and the prompt length: enough to check the plumbing."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def adapter_names(self) -> list[str]:
        return ["findings"]

    def generate(self, prompt_embeds: list[torch.Tensor], *, max_new_tokens: int,
                 adapter: str | None = None) -> list[list[int]]:
        if adapter not in (None, "findings"):
            raise UnknownAdapterError(f"no adapter named {adapter!r}.", "Loaded adapters: findings.")
        self.calls += 1
        return [[1 if adapter else 0, int(e.shape[0])][:max_new_tokens] for e in prompt_embeds]


def _test_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/test/report")
    def report(file: Annotated[UploadFile, File()], adapter: Annotated[str | None, Form()] = None) -> dict:
        path = save_upload_to_tmp(file)
        vol = radfm.load_volume(path)
        logging.getLogger("radfm.tasks.test").info("drafted a report for a %s volume", vol.modality)
        embeds = torch.full((4, 8), float(vol.array.mean() > 0))
        ids = state.require_backend().generate([embeds], max_new_tokens=8, adapter=adapter)[0]
        return {"text": REPORT_TEXT, "ids": ids, "kind": path.name}

    @router.get("/v1/test/slow")
    def slow() -> dict:
        time.sleep(1.0)
        return {"ok": True}

    @router.get("/v1/test/boom")
    def boom() -> dict:
        raise RuntimeError(f"failed on patient {PATIENT}")

    @router.get("/v1/test/config")
    def config() -> dict:
        return {"dir": str(state.model_dir("segmentation"))}

    return router


def _client(tmp_path: Path, **settings_kw) -> tuple[TestClient, FakeBackend]:
    backend = FakeBackend()
    kw = {"api_keys": (KEY,), "tmp_dir": tmp_path, "routers": ()} | settings_kw
    app = create_app(ServeSettings(**kw), backend=backend, model_dirs={"report": tmp_path})
    app.include_router(_test_router(app.state.radfm))
    return TestClient(app, raise_server_exceptions=False), backend


@pytest.fixture
def client(tmp_path):
    c, _ = _client(tmp_path, max_upload_bytes=2 * 2**20)
    with c:
        yield c


def _upload(data: bytes, name: str = "scan.nii.gz", **form) -> dict:
    return {"files": {"file": (name, data, "application/octet-stream")}, "data": form}


# ------------------------------------------------------------------------------------ auth
@pytest.mark.parametrize("method,path", [("GET", "/health"), ("GET", "/docs"), ("GET", "/openapi.json"),
                                         ("POST", "/v1/test/report"), ("GET", "/no/such/route")])
def test_every_route_needs_the_key(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path, headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert client.request(method, path, headers={"Authorization": "Basic " + KEY}).status_code == 401


def test_key_as_header_or_bearer(client):
    assert client.get("/health", headers=AUTH).status_code == 200
    r = client.get("/health", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["backend"] == "fake" and body["adapters"] == ["findings"]
    assert body["models"] == ["report"]


def test_keys_come_from_env_or_file_and_must_be_long(tmp_path, monkeypatch):
    monkeypatch.setenv("RADFM_API_KEY", KEY)
    assert load_api_keys() == (KEY,)
    f = tmp_path / "keys"
    f.write_text(f"# rotated keys\n{KEY}\n{KEY[::-1]}\n")
    assert load_api_keys(f) == (KEY, KEY[::-1])
    monkeypatch.delenv("RADFM_API_KEY")
    with pytest.raises(ConfigError, match="no API key"):
        load_api_keys()
    f.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16") as exc:
        load_api_keys(f)
    assert "short" not in str(exc.value).replace("shorter", "")
    with pytest.raises(ConfigError, match="API key"):
        create_app(ServeSettings(api_keys=()), backend=None)
    assert KEY not in repr(ServeSettings(api_keys=(KEY,)))


# ------------------------------------------------------------------------------------ uploads
def test_good_nifti_and_dicom_zip(client, make_nifti, make_dicom_zip, tmp_path):
    r = client.post("/v1/test/report", headers=AUTH, **_upload(make_nifti()))
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "image.nii.gz" and r.json()["ids"] == [0, 4]
    r = client.post("/v1/test/report", headers=AUTH, **_upload(make_dicom_zip(3), "series.zip", adapter="findings"))
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "series" and r.json()["ids"] == [1, 4]
    assert list(tmp_path.iterdir()) == [], "uploads must be deleted after the response"


def test_oversized_upload_is_413_by_header_and_while_streaming(client):
    big = b"\0" * (3 * 2**20)
    r = client.post("/v1/test/report", headers=AUTH, **_upload(big))
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must trip while the body streams
        for _ in range(6):
            yield b"\0" * 2**19

    r = client.post("/v1/test/report", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"},
                    content=chunks())
    assert r.status_code == 413


def test_non_image_is_415(client):
    for data, name in [(b"%PDF-1.7 not an image" * 100, "scan.nii.gz"), (b"\x1f\x8b" + b"junk" * 50, "x.nii.gz"),
                       (b"", "empty.nii")]:
        r = client.post("/v1/test/report", headers=AUTH, **_upload(data, name))
        assert r.status_code == 415, (name, r.text)
        assert "NIfTI" in r.json()["hint"] or "empty" in r.json()["detail"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "hello")
    r = client.post("/v1/test/report", headers=AUTH, **_upload(buf.getvalue(), "series.zip"))
    assert r.status_code == 415 and "DICOM" in r.json()["detail"]


def test_missing_file_field_is_422(client):
    assert client.post("/v1/test/report", headers=AUTH, data={"adapter": "x"}).status_code == 422


@pytest.mark.parametrize("member", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "..\\evil.dcm",
                                    "C:\\evil.dcm"])
def test_zip_path_traversal_is_400(client, tmp_path, member, make_dicom_zip):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/slice.dcm", b"\0" * 128 + b"DICM")
        zf.writestr(member, b"\0" * 128 + b"DICM")
    r = client.post("/v1/test/report", headers=AUTH, **_upload(buf.getvalue(), "series.zip"))
    assert r.status_code == 400, r.text
    assert "traversal" in r.json()["detail"]
    assert not (tmp_path.parent / "evil.dcm").exists()
    assert list(tmp_path.iterdir()) == []


def test_zip_symlink_and_caps(tmp_path, make_dicom_zip):
    c, _ = _client(tmp_path, max_zip_members=5, max_extracted_bytes=2**20)
    with c:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("series/link.dcm")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
        r = c.post("/v1/test/report", headers=AUTH, **_upload(buf.getvalue(), "s.zip"))
        assert r.status_code == 400 and "symbolic link" in r.json()["detail"]
        r = c.post("/v1/test/report", headers=AUTH, **_upload(make_dicom_zip(6), "s.zip"))
        assert r.status_code == 413 and "6 files" in r.json()["detail"]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:  # a small zip bomb: 4 MB of zeros
            zf.writestr("series/bomb.dcm", b"\0" * 128 + b"DICM" + b"\0" * (4 * 2**20))
        assert len(buf.getvalue()) < 64 * 1024
        r = c.post("/v1/test/report", headers=AUTH, **_upload(buf.getvalue(), "s.zip"))
        assert r.status_code == 413 and "unpacks" in r.json()["detail"]
        assert c.post("/v1/test/report", headers=AUTH, **_upload(make_dicom_zip(3), "s.zip")).status_code == 200
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ errors
def test_unknown_adapter_is_404(client, make_nifti):
    r = client.post("/v1/test/report", headers=AUTH, **_upload(make_nifti(), adapter="nope"))
    assert r.status_code == 404
    assert r.json()["type"] == "UnknownAdapterError" and "findings" in r.json()["hint"]


def test_unconfigured_model_is_503_naming_the_setting(client):
    r = client.get("/v1/test/config", headers=AUTH)
    assert r.status_code == 503 and "--model-dir segmentation=DIR" in r.json()["hint"]


def test_no_backend_is_503(tmp_path, make_nifti):
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path, routers=()), backend=None)
    app.include_router(_test_router(app.state.radfm))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/test/report", headers=AUTH, **_upload(make_nifti()))
        assert r.status_code == 503 and "without an LLM" in r.json()["detail"]


def test_timeout_is_504(tmp_path):
    c, _ = _client(tmp_path, request_timeout_s=0.2)
    with c:
        r = c.get("/v1/test/slow", headers=AUTH)
        assert r.status_code == 504
        assert c.get("/health", headers=AUTH).status_code == 200


def test_server_keeps_serving_and_logs_no_phi(tmp_path, caplog, make_nifti, make_dicom_zip):
    """Bad requests of every kind, then a good one succeeds; no report text, patient name or
    query string reaches the logs."""
    c, _ = _client(tmp_path, max_upload_bytes=2**20)
    caplog.set_level(logging.DEBUG)
    with c:
        bad = [
            c.get("/health"),
            c.post("/v1/test/report", headers=AUTH, **_upload(b"not an image" * 10)),
            c.post("/v1/test/report", headers=AUTH, **_upload(b"\0" * (2 * 2**20))),
            c.post("/v1/test/report", headers=AUTH, **_upload(make_nifti(), adapter="nope")),
            c.get("/v1/test/boom", headers=AUTH),
            c.get(f"/health?patient={PATIENT}", headers={"X-API-Key": "wrong-key-but-long-enough"}),
        ]
        assert [r.status_code for r in bad] == [401, 415, 413, 404, 500, 401]
        assert PATIENT not in bad[4].text  # the 500 body is generic
        good = c.post("/v1/test/report", headers=AUTH, **_upload(make_dicom_zip(3), "s.zip"))
        assert good.status_code == 200 and good.json()["text"] == REPORT_TEXT
        assert c.get(f"/health?patient={PATIENT}", headers=AUTH).status_code == 200
    # the test client's own httpx logger prints its URLs; everything else is the server side
    logs = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("httpx"))
    assert "radfm.serve.access" in {r.name for r in caplog.records}
    assert "/v1/test/report 200" in logs
    for secret in (REPORT_TEXT, "SECRETFINDING", "SECRETPATIENT", "JANE", KEY, "patient="):
        assert secret not in logs, f"{secret!r} leaked into the logs"
    assert "RuntimeError" in logs  # the 500 is logged by type and place only


# ------------------------------------------------------------------------------------ routers
def test_routers_from_entry_points_and_a_broken_one(tmp_path, monkeypatch):
    def good(state: ServeState) -> APIRouter:
        r = APIRouter()

        @r.get("/v1/good")
        def _() -> dict:
            return {"backend": state.backend.name}

        return r

    def broken(state: ServeState) -> APIRouter:
        raise ImportError("missing optional dependency")

    table = {"good": good, "broken": broken}
    monkeypatch.setattr(app_module.registry, "available", lambda group: sorted(table))
    monkeypatch.setattr(app_module.registry, "load", lambda group, name: table[name])
    app = create_app(ServeSettings(api_keys=(KEY,)), backend=FakeBackend())
    with TestClient(app) as c:
        assert c.get("/v1/good", headers=AUTH).json() == {"backend": "fake"}
        health = c.get("/health", headers=AUTH).json()
        assert health["routers"] == ["good"] and "broken" in health["routers_failed"]
        assert c.get("/v1/good").status_code == 401
    with pytest.raises(ImportError):  # asked for by name: a failure is fatal
        create_app(ServeSettings(api_keys=(KEY,), routers=("broken",)), backend=None)


def test_installed_routes_group_loads():
    """Whatever is registered under radfm.routes (report, segment …) mounts without error."""
    app = create_app(ServeSettings(api_keys=(KEY,)), backend=FakeBackend())
    with TestClient(app) as c:
        health = c.get("/health", headers=AUTH).json()
    assert health["routers_failed"] == {}, health["routers_failed"]
    assert sorted(health["routers"]) == registry.available("radfm.routes")
