"""``radfm bench serve-load``: ``radfm serve`` under concurrent load: latency, errors, server memory.

What is measured (issue 15 item 4): a real ``radfm serve --engine none --router segmentation`` in
its own process on 127.0.0.1, then ``--rounds`` bursts of ``--concurrency`` simultaneous
``GET /health`` (one httpx.AsyncClient, a connection per request). Per burst: errors (anything
but 200), p50 / p95 / max latency of a request (send to answer). With ``--heavy K`` each burst
runs while K ``POST /v1/segment`` uploads of a small CT phantom are in flight (model inference in
the server's worker threads, queued by admission control): it shows whether ``/health`` waits
behind heavy work. Server memory: VmRSS after start-up, after the first burst and after the last
one (flat memory = no growth per burst), and the peak VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from radfm.argtypes import non_negative_int, positive_int
from radfm.eval.benchreport import add_output_args, publish

NAME = "serve-load"
TITLE = "Service under load: concurrent /health on radfm serve (admission control)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"radfm bench {NAME}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=positive_int, default=200, help="simultaneous /health requests (default 200)")
    p.add_argument("--rounds", type=positive_int, default=5, help="bursts (default 5)")
    p.add_argument("--heavy", type=non_negative_int, default=0,
                   help="POST /v1/segment uploads in flight during each burst (default 0)")
    p.add_argument("--max-active", type=positive_int, default=4, help="server's --max-active (default 4)")
    p.add_argument("--max-queue", type=non_negative_int, default=64, help="server's --max-queue (default 64)")
    add_output_args(p)
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB (Linux /proc)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _start(port: int, key: str, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RADFM_API_KEY": key, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "radfm.cli", "serve", "--engine", "none", "--router", "segmentation",
           "--port", str(port), "--max-active", str(args.max_active), "--max-queue", str(args.max_queue)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(url: str, key: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", headers={"X-API-Key": key}, timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout_s:g} s: {log.read_text()[-2000:]}")


def _phantom_bytes(tmp: Path) -> bytes:
    from radfm.data.phantom import make_phantom
    from radfm.io import save_volume

    case = make_phantom(0, shape=(48, 48, 48), spacing=(4.0, 4.0, 4.0))
    return save_volume(case.image, tmp / "ct.nii.gz").read_bytes()


async def _burst(url: str, key: str, n: int, heavy: int, upload: bytes) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=n + heavy, max_keepalive_connections=n + heavy)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=600) as client:
        async def one() -> tuple[float, int | str]:
            t0 = time.perf_counter()
            try:
                r = await client.get("/health")
                return time.perf_counter() - t0, r.status_code
            except httpx.HTTPError as exc:
                return time.perf_counter() - t0, type(exc).__name__

        async def seg() -> int | str:
            try:
                r = await client.post("/v1/segment", files={"file": ("ct.nii.gz", upload)},
                                      data={"points": "24,24,24", "return_mask": "none"})
                return r.status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        heavy_tasks = [asyncio.create_task(seg()) for _ in range(heavy)]
        if heavy:
            await asyncio.sleep(0.5)  # the uploads are in the server before the burst
        answers = await asyncio.gather(*(one() for _ in range(n)))
        heavy_codes = await asyncio.gather(*heavy_tasks)
    lat = sorted(t for t, _ in answers)
    return {"errors": sum(code != 200 for _, code in answers), "p50_ms": 1000 * statistics.median(lat),
            "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], "max_ms": 1000 * lat[-1],
            "heavy": [str(c) for c in heavy_codes]}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    key, port = secrets.token_urlsafe(24), _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="radfm-serve-load-") as tmp:
        log = Path(tmp) / "server.log"
        upload = _phantom_bytes(Path(tmp)) if args.heavy else b""
        proc = _start(port, key, args, log)
        try:
            start_s = _wait_ready(url, key, proc, log)
            mem = {"start": _memory(proc.pid)}
            bursts = []
            for k in range(args.rounds):
                bursts.append(asyncio.run(_burst(url, key, args.concurrency, args.heavy, upload)))
                if k == 0:
                    mem["after first burst"] = _memory(proc.pid)
            mem["after last burst"] = _memory(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = [{"burst": k + 1, "requests": args.concurrency, "errors": b["errors"], "p50 ms": round(b["p50_ms"], 1),
             "p95 ms": round(b["p95_ms"], 1), "max ms": round(b["max_ms"], 1),
             **({"heavy statuses": " ".join(b["heavy"])} if args.heavy else {})} for k, b in enumerate(bursts)]
    all_p = sorted(b["p95_ms"] for b in bursts)
    rss = {k: round(v["VmRSS"], 1) for k, v in mem.items()}
    notes = (f"{args.rounds} bursts of {args.concurrency} concurrent GET /health"
             + (f", each with {args.heavy} POST /v1/segment (48³ phantom) in flight" if args.heavy else "")
             + f"; server --max-active {args.max_active} --max-queue {args.max_queue}, started in {start_s:.1f} s. "
             f"Errors: {sum(b['errors'] for b in bursts)} of {args.rounds * args.concurrency}. Worst p95 "
             f"{all_p[-1]:.1f} ms. Server VmRSS MiB: " + ", ".join(f"{k} {v}" for k, v in rss.items())
             + f"; peak VmHWM {max(v['VmHWM'] for v in mem.values()):.1f} MiB.")
    command = shlex.join(["radfm", "bench", NAME, *argv])
    results = {"name": NAME, "command": command, "rows": rows, "memory_mib": mem, "start_s": start_s}
    return publish(args, NAME, title=TITLE, command=command, rows=rows, notes=notes, results=results)
