"""Latency and memory of the prompt segmenter for ``radfm bench promptseg``.

Embedding time (fp32/bf16), this process's peak RSS, and the 512×512×400 CT segmented from one
click in a fresh subprocess (so its peak RSS is its own, not the benchmark's).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radfm.io.volume import Volume
from radfm.tasks.segmentation.predictor import SegPredictor

__all__ = ["big_ct", "embedding_latency", "maxrss_mib", "memory_run"]


def embedding_latency(model: Any, dtype: str, repeats: int = 3) -> dict[str, float]:
    """Seconds to embed (a) a 128³ 1 mm volume through set_volume, (b) a 128³ model-grid tensor."""
    rng = np.random.default_rng(0)
    vol = Volume(array=(rng.normal(0, 30, (128, 128, 128)) + 40).astype(np.float32), affine=np.eye(4), modality="CT")
    pred = SegPredictor(model, dtype=dtype)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        pred.set_volume(vol)
        ts.append(time.perf_counter() - t)
    x = torch.randn(1, 1, 128, 128, 128)
    tg = []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            model.get_image_embeddings(x, torch.tensor([0]))
        tg.append(time.perf_counter() - t)
    return {"set_volume_128_1mm_s": statistics.median(ts), "embed_128_model_grid_s": statistics.median(tg)}


def maxrss_mib() -> float:
    """Peak RSS of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_MEMORY_CHILD = r"""
import json, resource, sys, time
import radfm
from radfm.tasks.segmentation.files import segment_file
t = time.perf_counter()
s = segment_file(sys.argv[1], out=sys.argv[2], points=[json.loads(sys.argv[3])], labels=[1])
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "seconds": time.perf_counter() - t, "voxels": s["voxels"], "score": s["score"]}))
"""


def big_ct(data: Path, out: Path, shape: tuple[int, int, int] = (512, 512, 400)) -> tuple[Path, list[float]]:
    """The real TotalSegmentator CT (122×101×112 at 3 mm) upsampled to ``shape`` (int16 NIfTI), and a click
    on the liver in native voxel indices. Built slab by slab so the parent stays small too."""
    import nibabel as nib
    from scipy import ndimage

    src = nib.load(data / "seg3d" / "totalsegmentator" / "example_ct.nii.gz")
    arr = np.asarray(src.dataobj, dtype=np.float32)
    factors = [n / s for n, s in zip(shape, arr.shape)]
    aff = src.affine.copy()
    aff[:3, :3] = aff[:3, :3] / np.asarray(factors)[None, :]
    big = np.empty(shape, dtype=np.int16)
    step = 40
    for z0 in range(0, shape[2], step):
        z1 = min(z0 + step, shape[2])
        zs = (np.arange(z0, z1) + 0.5) / factors[2] - 0.5
        xs = (np.arange(shape[0]) + 0.5) / factors[0] - 0.5
        ys = (np.arange(shape[1]) + 0.5) / factors[1] - 0.5
        grid = np.meshgrid(xs, ys, zs, indexing="ij")
        big[:, :, z0:z1] = ndimage.map_coordinates(arr, grid, order=1, mode="nearest").astype(np.int16)
    nib.save(nib.Nifti1Image(big, aff), out)
    # Click: the liver's most interior voxel from the TotalSegmentator labels of the same CT (its slices
    # 82–111 are example_ct_sm, which the labels cover), mapped to the upsampled grid.
    seg = np.asarray(nib.load(data / "seg3d" / "totalsegmentator" / "example_seg.nii.gz").dataobj) == 5
    dist = ndimage.distance_transform_edt(seg)
    c = np.array(np.unravel_index(int(np.argmax(dist)), seg.shape), float) + np.array([0.0, 0.0, 82.0])
    click = [float((c[a] + 0.5) * factors[a] - 0.5) for a in range(3)]
    return out, click


def memory_run(data: Path, shape: tuple[int, int, int] = (512, 512, 400)) -> dict[str, Any]:
    """Segment a ``shape`` CT from one click in a fresh subprocess; returns its peak RSS and time."""
    with tempfile.TemporaryDirectory() as tmp:
        path, click = big_ct(data, Path(tmp) / "big_ct.nii", shape)
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(path), str(Path(tmp) / "mask.nii.gz"),
                               json.dumps(click)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["shape"] = list(shape)
        return res
