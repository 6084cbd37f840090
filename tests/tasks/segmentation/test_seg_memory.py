"""Bounded memory on a large volume: one click on a 256×256×200 CT segmented in a fresh process.

The full-size check (512×512×400 from the real CT, ≤ 4 GiB) is ``radfm bench promptseg --memory``;
this is the same path (load → check → plan → one window → map back → save) at 1/8 of the voxels.
Measured peak RSS here: 835 MiB (ViT model), 937 MiB (CNN model, 2026-12-07) (of which ~0.45 GiB is Python + torch + transformers themselves);
the full-size benchmark run measured 2,351 MiB.
Bound: 1.5 GiB, so a regression that materialises the whole volume at float64 or resamples full-size
logits (≥ +0.4 GiB at this size, ≥ +3 GiB at full size) fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from segtest_utils import tiny_model

BOUND_MIB = 1536

# VmHWM (this process's own peak, reset by exec), not ru_maxrss: Linux keeps ru_maxrss across execve, so
# a child of a big pytest process would report the parent's peak.
_CHILD = r"""
import json, sys
import radfm
from radfm.tasks.segmentation.files import segment_file
s = segment_file(sys.argv[1], out=sys.argv[2], points=[[128.0, 120.0, 100.0]], labels=[1], model_dir=sys.argv[3])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"maxrss_mib": hwm / 1024.0, "voxels": s["voxels"]}))
"""


@pytest.mark.slow
def test_large_ct_one_click_peak_memory_is_bounded(tmp_path: Path) -> None:
    shape = (256, 256, 200)
    rng = np.random.default_rng(0)
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    y = np.linspace(-1, 1, shape[1])[None, :, None]
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    body = (x**2 + (y / 0.8) ** 2 < 0.8).astype(np.int16) * 1040 - 1000  # air -1000, body 40 HU
    organ = ((x - 0.1) ** 2 + y**2 + z**2 < 0.15)
    vol = np.broadcast_to(body, shape).copy()
    vol[organ] = 90
    vol += rng.integers(-15, 15, shape, dtype=np.int16)
    img = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.7, 1.0, 1.0])), img)
    del vol, body, organ
    model = tiny_model(window=64, spacing=3.0)
    model.save_pretrained(tmp_path / "model")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(img), str(tmp_path / "mask.nii.gz"), str(tmp_path / "model")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS {res['maxrss_mib']:.0f} MiB")
    assert res["maxrss_mib"] <= BOUND_MIB
    assert nib.load(tmp_path / "mask.nii.gz").shape == shape
