"""Build the corpus once, hash it, run batches in child processes, check the inputs are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.hostile.corpus import Case, all_cases, build_all

REPO = Path(__file__).resolve().parents[2]


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def build(root: Path, cases: list[Case] | None = None) -> tuple[list[Case], dict[str, Path], dict[str, str]]:
    cases = cases or all_cases()
    paths = build_all(root, cases)
    (root / "paths.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return cases, paths, {k: tree_hash(v) for k, v in paths.items()}


def run_batches(mode: str, root: Path, names: list[str], n_proc: int = 2) -> tuple[list[dict], float]:
    """Run ``names`` in ``n_proc`` child processes at once; (results, max VmHWM MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    chunks = [names[i::n_proc] for i in range(n_proc)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.hostile.runner", mode, str(root), *chunk], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for chunk in chunks if chunk]
    results, peak = [], 0.0
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"runner died (rc {p.returncode}): {err[-2000:]}")
        data = json.loads(out.strip().splitlines()[-1])
        results += data["results"]
        peak = max(peak, data["vm_hwm_mib"])
    return results, peak


def unchanged(paths: dict[str, Path], hashes: dict[str, str]) -> list[str]:
    return [k for k, v in paths.items() if tree_hash(v) != hashes[k]]
