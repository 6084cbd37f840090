"""The radfm command: subcommands exist, user errors are one paragraph, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from radfm.cli import main

RADFM = [sys.executable, "-m", "radfm.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RADFM, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_core_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for cmd in ("check", "demo", "bench"):
        assert cmd in out


def test_check_good_and_bad_files(tmp_path):
    good = tmp_path / "ct.nii.gz"
    arr = np.full((32, 32, 24), -1000, np.int16)
    arr[6:26, 6:26, 4:20] = 40
    arr[14:18, 14:18, 8:16] = 800
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0])), good)
    res = _run("check", str(good), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["summary"]["modality"] == "CT" and not [f for f in report["findings"] if f["level"] == "error"]

    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = bad.read_bytes()
    res = _run("check", str(bad))
    assert res.returncode == 1
    assert "load_failed" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert bad.read_bytes() == before  # inputs are never modified

    nan = tmp_path / "nan.nii.gz"
    arr_f = arr.astype(np.float32)
    arr_f[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr_f, np.eye(4)), nan)
    res = _run("check", str(nan))
    assert res.returncode == 1 and "nan_values" in res.stdout


def test_bench_list_and_unknown_name():
    res = _run("bench", "--list")
    assert res.returncode == 0 and {"io", "encoder"} <= set(res.stdout.split())
    res = _run("bench", "no-such-bench")
    assert res.returncode == 2
    assert "no bench named 'no-such-bench'" in res.stderr and "Available:" in res.stderr
    assert "Traceback" not in res.stderr
