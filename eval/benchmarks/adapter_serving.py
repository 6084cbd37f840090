"""``radfm bench adapter-serving``: N task adapters on one shared encoder vs one model per task.

What is measured (issue 14 item 4): N LoRA adapters are made with ``radfm adapt`` (``adapt``, a
few steps each on phantoms, one structure per adapter) over one base encoder (default: the shipped
shared CNN encoder). Each way of serving them is loaded in a fresh Python process, after the same
imports, and its resident memory (VmRSS, Linux /proc) is read before loading, after loading, and
after one request per adapter:

- ``one encoder, adapters switched``: :class:`~radfm.tasks.dense_segmentation.pool.AdapterPool`
  (what ``radfm serve --task-adapter NAME=DIR`` holds): the encoder once, ``set_adapter`` per request;
- ``one model per task``: :func:`~radfm.tasks.dense_segmentation.checkpoint.load_adapted` per folder.

Both answer the same requests (the label maps are compared: they must be identical). Request
latency: median over ``--repeats`` rounds of one request per adapter (a ``--shape`` phantom).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from radfm.argtypes import positive_int
from radfm.eval.benchreport import add_output_args, publish

NAME = "adapter-serving"
TITLE = "Task adapters on one shared encoder vs one model per task (serve memory)"
MODES = ("pool", "separate")
MODE_LABEL = {"pool": "one encoder, adapters switched", "separate": "one model per task"}
#: phantom label ids → adapter structure (one adapter each, in this order).
STRUCTURES = ((5, "liver"), (2, "right_lung"), (4, "heart"), (6, "spleen"), (8, "left_kidney"), (3, "left_lung"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"radfm bench {NAME}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", type=positive_int, default=4, help=f"task adapters (1–{len(STRUCTURES)}, default 4)")
    p.add_argument("--encoder", type=Path, default=None, help="base encoder folder (default: the shipped CNN encoder)")
    p.add_argument("--steps", type=positive_int, default=4, help="adapt steps per adapter (default 4)")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48], help="request phantom shape at 4 mm (default 48³)")
    p.add_argument("--repeats", type=positive_int, default=2, help="rounds of one request per adapter (default 2)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads in each process (default 2)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--dirs", type=Path, nargs="*", help=argparse.SUPPRESS)
    add_output_args(p)
    return p


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def _make_adapters(root: Path, n: int, encoder: Path, steps: int) -> list[Path]:
    from radfm.data.phantom import make_phantom
    from radfm.tasks.dense_segmentation.api import adapt
    from radfm.tasks.dense_segmentation.train import AugmentConfig

    cases = [make_phantom(s, shape=(48, 48, 48), spacing=(4.0, 4.0, 4.0), n_lesions=0) for s in range(2)]
    dirs = []
    for label, name in STRUCTURES[:n]:
        out = root / name
        adapt(data=cases, shots=2, strategy="lora", encoder=encoder, steps=steps, patch_size=(64, 64, 64),
              label_names={label: name}, out_dir=out, progress=False, eval_cases=0, augment=AugmentConfig.none())
        dirs.append(out)
    return dirs


def _child(mode: str, dirs: list[Path], shape: tuple[int, ...], repeats: int, threads: int) -> dict[str, Any]:
    """One way of serving, measured in this (fresh) process; prints nothing but its JSON."""
    import hashlib

    import torch

    torch.set_num_threads(threads)
    import radfm  # noqa: F401
    from radfm.data.phantom import make_phantom
    from radfm.tasks.dense_segmentation.checkpoint import load_adapted
    from radfm.tasks.dense_segmentation.inference import predict_volume
    from radfm.tasks.dense_segmentation.pool import AdapterPool

    volume = make_phantom(99, shape=shape, spacing=(4.0, 4.0, 4.0), n_lesions=0).image
    before = _rss_mib()
    t0 = time.perf_counter()
    if mode == "pool":
        pool = AdapterPool({d.name: d for d in dirs})
        copies = pool.encoder_copies()

        def request(name: str) -> Any:
            return pool.predict(name, volume)
    else:
        models = {d.name: load_adapted(d)[:2] for d in dirs}
        copies = len(models)

        def request(name: str) -> Any:
            return predict_volume(*models[name], volume)
    load_s = time.perf_counter() - t0
    loaded = _rss_mib()
    times, digests = [], {}
    for _ in range(repeats):
        for d in dirs:
            t = time.perf_counter()
            labels = request(d.name)
            times.append(time.perf_counter() - t)
            digests[d.name] = hashlib.sha256(labels.tobytes()).hexdigest()
    return {"mode": mode, "encoder_copies": copies, "rss_before": before, "rss_loaded": loaded,
            "rss_after_requests": _rss_mib(), "load_s": load_s, "median_request_ms": 1000 * statistics.median(times),
            "digests": digests}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, list(args.dirs), tuple(args.shape), args.repeats, args.threads)))
        return {}
    if args.adapters > len(STRUCTURES):
        raise SystemExit(f"--adapters must be at most {len(STRUCTURES)}")
    import torch

    from radfm.starter import starter_encoder_path

    torch.set_num_threads(args.threads)
    encoder = args.encoder or starter_encoder_path("cnn")
    with tempfile.TemporaryDirectory(prefix="radfm-adapter-serving-") as tmp:
        dirs = _make_adapters(Path(tmp), args.adapters, encoder, args.steps)
        found = {}
        for mode in MODES:
            cmd = [sys.executable, "-m", "radfm.eval.benchmarks.adapter_serving", "--child", mode,
                   "--shape", *map(str, args.shape), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--dirs", *map(str, dirs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            found[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    same = found["pool"]["digests"] == found["separate"]["digests"]
    rows = [{"serving": MODE_LABEL[m], "adapters": args.adapters, "encoder copies": r["encoder_copies"],
             "RSS before MiB": round(r["rss_before"], 1), "RSS loaded MiB": round(r["rss_loaded"], 1),
             "loaded Δ MiB": round(r["rss_loaded"] - r["rss_before"], 1),
             "RSS after requests MiB": round(r["rss_after_requests"], 1), "load s": round(r["load_s"], 2),
             "median request ms": round(r["median_request_ms"], 1)} for m, r in found.items()]
    pool_d, sep_d = (found[m]["rss_loaded"] - found[m]["rss_before"] for m in MODES)
    pool_a, sep_a = (found[m]["rss_after_requests"] - found[m]["rss_before"] for m in MODES)
    notes = (f"{args.adapters} LoRA adapters ({args.steps} adapt steps each) over {Path(encoder).name}; requests: "
             f"{args.repeats} rounds of one {'×'.join(map(str, args.shape))} phantom per adapter, "
             f"{args.threads} torch threads, each mode in a fresh process after the same imports. Loaded memory: "
             f"{pool_d:.1f} MiB shared vs {sep_d:.1f} MiB separate (ratio {pool_d / max(sep_d, 1e-9):.2f}); after the "
             f"requests {pool_a:.1f} vs {sep_a:.1f} MiB (ratio {pool_a / max(sep_a, 1e-9):.2f}). Label maps "
             f"{'identical' if same else 'DIFFERENT'} between the two ways.")
    command = shlex.join(["radfm", "bench", NAME, *argv])
    results = {"name": NAME, "command": command, "rows": rows, "raw": found, "identical": same}
    return publish(args, NAME, title=TITLE, command=command, rows=rows, notes=notes, results=results)


if __name__ == "__main__":
    run()
