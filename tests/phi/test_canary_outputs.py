"""The canary series through every image-reading CLI command and every upload route (issue 15 item 3).

Why one test module: a header value can leak through any door — stdout, stderr, a log record, a
JSON field, a written file, an HTTP body. The canary (tests/phi/canary.py) plants a unique marker
in every PS3.15 Annex E attribute, private tags and nested sequences; here it goes, intact and
broken (a truncated slice, a truncated file, a Modality length that swallows the patient module,
two series in one folder), through ``radfm check / segment / register / report`` (real CLI, fresh
interpreter, ``-vv`` so every log record reaches stderr) and through ``/v1/segment``,
``/v1/sessions`` and ``/v1/report`` (TestClient, every log record captured). No marker may appear
anywhere. DICOM SEG / SR outputs are checked with ``--deidentify`` (``deidentify=true``): without
it they carry the patient module by the standard (tests/phi/test_phi.py).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from canary import Canary, break_modality_length, build_series, output_files

REPO = Path(__file__).resolve().parents[2]
KEY = "canary-test-key-0123456789"
AUTH = {"X-API-Key": KEY}
POINT = "64,64,5"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Canary]:
    """The intact series (10 slices: registration needs 8) and its broken copies."""
    root = tmp_path_factory.mktemp("canary-inputs")
    c = build_series(root / "series", n=10)
    slices = sorted((root / "series").iterdir())
    trunc_series = root / "trunc_series"
    shutil.copytree(root / "series", trunc_series)
    cut = trunc_series / slices[4].name
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    trunc_file = root / "trunc_file.dcm"
    trunc_file.write_bytes(slices[3].read_bytes()[:3000])
    modality = root / "modality_ffff.dcm"
    shutil.copy(slices[2], modality)
    break_modality_length(modality)
    two = root / "two_series"
    two.mkdir()
    shutil.copy(slices[0], two / "a.dcm")
    ds = pydicom.dcmread(slices[1])
    ds.SeriesInstanceUID, ds.SeriesNumber = ds.SeriesInstanceUID + ".99", 8
    ds.save_as(two / "b.dcm")
    paths = {"series": root / "series", "slice": slices[0], "trunc_series": trunc_series,
             "trunc_file": trunc_file, "modality_ffff": modality, "two_series": two}
    return paths, c


def _file_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            data += fh.read()
    return data


# ------------------------------------------------------------------------------------ CLI
BROKEN = ("trunc_series", "trunc_file", "modality_ffff", "two_series")


def _cli_cases(p: dict[str, Path]) -> list[tuple[str, list[str], bool]]:
    """(name, args with {out} for the run's output folder, should succeed)."""
    ok = [
        ("check", ["check", str(p["series"])], True),
        ("check-json", ["check", str(p["series"]), "--json"], True),
        ("check-file", ["check", str(p["slice"]), "--json"], True),
        ("segment", ["segment", str(p["series"]), "--point", POINT, "--out", "{out}/mask.nii.gz", "--json",
                     "--dicom-seg", "{out}/seg.dcm", "--deidentify"], True),
        ("register", ["register", str(p["series"]), str(p["series"]), "--out-warped", "{out}/w.nii.gz",
                      "--out-field", "{out}/f.nii.gz", "--json"], True),
        ("report", ["report", str(p["series"]), "--json", "--dicom-sr", "{out}/sr.dcm", "--deidentify",
                    "--max-new-tokens", "16"], True),
    ]
    bad = [(f"check-{b}", ["check", str(p[b]), "--json"], False) for b in BROKEN]
    bad += [(f"segment-{b}", ["segment", str(p[b]), "--point", POINT, "--out", "{out}/m.nii.gz", "--json"], False)
            for b in BROKEN]
    bad += [(f"register-{b}", ["register", str(p["series"]), str(p[b]), "--out-warped", "{out}/w.nii.gz"], False)
            for b in ("trunc_series", "modality_ffff")]
    bad += [(f"report-{b}", ["report", str(p[b]), "--json"], False) for b in ("trunc_series", "modality_ffff")]
    return ok + bad


def test_cli_commands_leak_no_canary(inputs, tmp_path: Path) -> None:
    paths, c = inputs
    env = {k: v for k, v in os.environ.items() if k != "RADFM_LOG_DETAILS"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="80")

    def run(case: tuple[str, list[str], bool]) -> tuple[str, bool, int, str, str, dict[str, list[str]]]:
        name, args, good = case
        out = tmp_path / name
        out.mkdir()
        argv = [a.replace("{out}", str(out)) for a in args]
        p = subprocess.run([sys.executable, "-m", "radfm.cli", "-vv", *argv], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=600)
        files = {str(f.relative_to(out)): c.find(_file_bytes(f), dates=True) for f in output_files(out)}
        return name, good, p.returncode, p.stdout, p.stderr, files

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, _cli_cases(paths)))
    problems = []
    for name, good, rc, out, err, files in results:
        if good and rc != 0:
            problems.append(f"{name}: exit {rc}: {err[-300:]}")
        if not good and rc not in (1, 2):
            problems.append(f"{name}: exit {rc} on a broken input")
        if "Traceback" in err:
            problems.append(f"{name}: traceback")
        for where, text in (("stdout", out), ("stderr", err)):
            if hits := c.find(text, dates=True):
                problems.append(f"{name}: {where} leaks {hits[:3]}")
        problems += [f"{name}: {f} leaks {hits[:3]}" for f, hits in files.items() if hits]
    assert problems == []
    by_name = {r[0]: r for r in results}
    assert json.loads(by_name["check-json"][3])["ok"] is True
    assert set(by_name["segment"][5]) == {"mask.nii.gz", "seg.dcm"}
    assert set(by_name["report"][5]) == {"sr.dcm"} and set(by_name["register"][5]) == {"w.nii.gz", "f.nii.gz"}
    assert "radfm: error:" in by_name["segment-two_series"][4]  # the several-series listing was printed


# ------------------------------------------------------------------------------------ HTTP
def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"study/{f.name}")
    return buf.getvalue()


def _upload(path: Path) -> tuple[str, bytes]:
    return (f"{path.name}.zip", _zip(path)) if path.is_dir() else (path.name, path.read_bytes())


def _decoded(body: bytes) -> bytes:
    """The body plus every base64 field decoded (and gunzipped): a mask or SR is a written file."""
    out = body
    try:
        data = json.loads(body)
    except ValueError:
        return out
    for key, value in data.items() if isinstance(data, dict) else []:
        if key.endswith("_b64") and isinstance(value, str):
            raw = base64.b64decode(value)
            out += raw + (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else b"")
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    from fastapi.testclient import TestClient

    from radfm.serve.app import ServeSettings, create_app
    from radfm.serve.backends import TransformersBackend
    from radfm.tasks.report.model import default_model_dir

    starter = default_model_dir()
    tmp = tmp_path_factory.mktemp("canary-serve")
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp, routers=("segmentation", "report", "synthesis")),
                     backend=TransformersBackend(starter / "llm"), model_dirs={"report": starter})
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, tmp


def test_upload_routes_leak_no_canary(inputs, client, caplog, capfd) -> None:
    paths, c = inputs
    http, tmp = client
    caplog.set_level(logging.DEBUG)
    answers: list[tuple[str, int, bytes]] = []

    def post(name: str, url: str, path: Path | None = None, **form: str) -> dict:
        files = {"file": _upload(path)} if path is not None else None
        r = http.post(url, headers=AUTH, files=files, data=form)
        answers.append((name, r.status_code, r.content))
        return r.json()

    post("segment", "/v1/segment", paths["series"], points=POINT)
    post("segment-file", "/v1/segment", paths["slice"], points="64,64,0")
    session = post("session", "/v1/sessions", paths["series"])
    r = http.post(f"/v1/sessions/{session.get('session_id')}/segment", headers=AUTH,
                  json={"points": [[64, 64, 5]], "labels": [1]})
    answers.append(("session-click", r.status_code, r.content))
    post("report", "/v1/report", paths["series"], max_new_tokens="16", return_sr="true", deidentify="true")
    post("segment-seg", "/v1/segment", paths["series"], points=POINT, return_mask="dicom-seg", deidentify="true")
    r = http.post(f"/v1/sessions/{session.get('session_id')}/segment", headers=AUTH,
                  json={"points": [[64, 64, 5]], "return_mask": "dicom-seg", "deidentify": True})
    answers.append(("session-seg", r.status_code, r.content))
    r = http.get(f"/v1/sessions/{session.get('session_id')}/image", headers=AUTH)  # raw gzip NIfTI
    answers.append(("session-image", r.status_code, r.content + gzip.decompress(r.content)))
    post("synthesize", "/v1/synthesize", paths["series"], task="lowdose")
    for b in BROKEN:
        post(f"segment-{b}", "/v1/segment", paths[b], points=POINT)
        post(f"session-{b}", "/v1/sessions", paths[b])
        post(f"report-{b}", "/v1/report", paths[b], max_new_tokens="16")
    status = {name: code for name, code, _ in answers}
    assert all(status[n] == 200 for n in ("segment", "segment-file", "session", "session-click", "report",
                                          "segment-seg", "session-seg", "session-image", "synthesize")), status
    assert all(400 <= code < 500 for name, code, _ in answers if name.split("-", 1)[-1] in BROKEN), status
    leaks = {name: hits for name, _, body in answers if (hits := c.find(_decoded(body), dates=True))}
    assert leaks == {}
    bodies = b"\n".join(body for _, _, body in answers)
    assert str(tmp).encode() not in bodies and b"radfm-upload-" not in bodies
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    printed = capfd.readouterr()
    assert c.find(logs, dates=True) == [] and c.find(printed.out + printed.err, dates=True) == []
    sr = pydicom.dcmread(io.BytesIO(base64.b64decode(json.loads(answers[4][2])["dicom_sr_b64"])))
    assert sr.PatientIdentityRemoved == "YES"
    for name in ("segment-seg", "session-seg"):  # deidentify=true reaches the SEG of both routes
        body = json.loads(next(b for n, _, b in answers if n == name))
        seg = pydicom.dcmread(io.BytesIO(base64.b64decode(body["dicom_seg_b64"])))
        assert seg.PatientIdentityRemoved == "YES", name
