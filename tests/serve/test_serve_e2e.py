"""End to end over real HTTP: ``radfm serve`` under uvicorn on 127.0.0.1, backed by the session's vLLM.

The report test (volume → report through ``/v1/report``) serves the shipped starter report model
(``radfm.tasks.report.weights``) with the transformers backend through the ``report`` router.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from radfm import registry
from radfm.serve.vllm_server import free_port

KEY = "e2e-key-0123456789abcdefgh"
AUTH = {"X-API-Key": KEY}
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def radfm_serve(tmp_path: Path, *args: str, ready_s: float = 120) -> Iterator[tuple[str, Path]]:
    """Run ``radfm serve ARGS`` on a free port; yield (base URL, log file); always stop it (SIGINT)."""
    port = free_port()
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RADFM_API_KEY"}
    cmd = [sys.executable, "-m", "radfm.cli", "serve", "--port", str(port), "--api-key-file", str(key_file), *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"radfm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"radfm serve not ready after {ready_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_radfm_serve_with_running_vllm(vllm_server, tmp_path, make_nifti):
    with radfm_serve(tmp_path, "--vllm-url", vllm_server.url, "--vllm-model", "tiny", "--max-upload-mb", "1") as (url, log):
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/health").status_code == 401
            assert c.get("/health", headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
            health = c.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json()
            assert health["backend"] == "vllm" and health["adapters"] == ["findings"]
            r = c.post("/v1/anything", headers=AUTH, files={"file": ("x.nii.gz", b"\0" * (2 * 2**20))})
            assert r.status_code == 413
            assert c.get("/health?study=SECRETSTUDY", headers=AUTH).status_code == 200
    text = log.read_text()
    assert "GET /health 200" in text and "413" in text
    assert KEY not in text and "SECRETSTUDY" not in text


def test_radfm_serve_refuses_to_start_without_a_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RADFM_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "radfm.cli", "serve", "--engine", "none", "--port", str(free_port())],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "no API key" in r.stderr and "Traceback" not in r.stderr


def test_build_backend_choices(tiny_llm, monkeypatch, tmp_path):
    from radfm.errors import ConfigError
    from radfm.serve.cli import build_backend

    assert build_backend("auto").backend is None
    handle = build_backend("transformers", model_dir=tiny_llm["llm"], adapters={"findings": tiny_llm["lora"]})
    try:
        assert handle.backend.name == "transformers" and handle.backend.adapter_names() == ["findings"]
    finally:
        handle.close()
    monkeypatch.setenv("RADFM_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_backend("vllm", model_dir=tiny_llm["llm"])
    with pytest.raises(ConfigError, match="unknown engine"):
        build_backend("tgi", model_dir=tiny_llm["llm"])


@pytest.mark.slow
def test_volume_to_report_through_radfm_serve(tmp_path, make_nifti):
    """POST a NIfTI to /v1/report of a real ``radfm serve`` running the shipped starter report model."""
    assert "report" in registry.available("radfm.routes"), (
        "the report router is not registered (pyproject: [project.entry-points.\"radfm.routes\"] "
        "report = \"radfm.tasks.report.routes:routes\"; reinstall with pip install -e .)")
    from radfm.tasks.report.model import default_model_dir

    model = default_model_dir()
    assert (model / "radfm_report.json").is_file(), f"the starter report model is missing from {model}"
    with radfm_serve(tmp_path, "--engine", "transformers", "--model", str(model), "--router", "report") as (url, log):
        with httpx.Client(base_url=url, timeout=120) as c:
            assert c.post("/v1/report", files={"file": ("ct.nii.gz", make_nifti())}).status_code == 401
            r = c.post("/v1/report", headers=AUTH, files={"file": ("ct.nii.gz", make_nifti())})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body.get("is_draft") is True
            texts = [body[k] for k in ("findings", "impression") if isinstance(body.get(k), str) and len(body[k]) > 8]
            assert texts, f"no report text in {body}"
            bad = c.post("/v1/report", headers=AUTH, files={"file": ("ct.nii.gz", b"not an image" * 20)})
            assert bad.status_code == 415
            assert c.post("/v1/report", headers=AUTH, files={"file": ("ct.nii.gz", make_nifti())}).status_code == 200
    logs = log.read_text()
    for t in texts:
        assert t not in logs, "report text leaked into the server log"
