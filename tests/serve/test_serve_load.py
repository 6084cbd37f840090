"""Service under load (issue 15 item 4): the real app under uvicorn on a loopback port.

200 concurrent ``/health`` → 200 × 200 (uvicorn's connection limit used to answer 503 past 64);
heavy requests past ``max_active + max_queue`` → 503 with ``Retry-After`` while those within it
succeed; a request that waits longer than ``queue_timeout_s`` → 503; ``/health`` answers while
every slot is busy (the work runs in threads, off the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import APIRouter

from radfm.errors import ConfigError
from radfm.serve.admission import AdmissionLimits
from radfm.serve.app import ServeSettings, create_app
from radfm.serve.cli import MAX_CONNECTIONS

KEY = "load-test-key-0123456789"
AUTH = {"X-API-Key": KEY}
SLOW_S = 1.0


def _slow_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/test/heavy")
    def heavy() -> dict:  # a sync route, like the task routes: runs in the thread pool
        time.sleep(SLOW_S)
        return {"ok": True}

    return router


@contextlib.contextmanager
def _server(**settings) -> Iterator[str]:
    """The app under a real uvicorn (as ``radfm serve`` runs it) in a thread; yields its base URL."""
    app = create_app(ServeSettings(api_keys=(KEY,), routers=(), **settings), backend=None)
    app.include_router(_slow_router())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, log_config=None,
                            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _burst(url: str, n: int, method: str = "GET", path: str = "/health") -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.request(method, path) for _ in range(n)), return_exceptions=True)


def test_200_concurrent_health_all_succeed() -> None:
    with _server() as url:
        answers = asyncio.run(_burst(url, 200))
    errors = [a for a in answers if isinstance(a, Exception) or a.status_code != 200]
    assert errors == [], errors[:3]


def test_heavy_requests_queue_then_503_with_retry_after() -> None:
    with _server(max_active=2, max_queue=3, retry_after_s=7) as url:
        t0 = time.perf_counter()
        answers = asyncio.run(_burst(url, 8, "POST", "/v1/test/heavy"))
        wall = time.perf_counter() - t0
        health = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()
    codes = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert codes == [200] * 5 + [503] * 3, codes
    busy = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
    assert all(a.headers.get("retry-after") == "7" and "busy" in a.json()["detail"] for a in busy)
    assert wall >= 3 * SLOW_S * 0.9  # 5 admitted, 2 at a time: they queued rather than ran at once
    assert health["queue"]["refused"] == 3 and health["queue"]["active"] == 0


def test_health_answers_while_every_slot_is_busy() -> None:
    async def scenario(url: str) -> tuple[list, float]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
            heavy = [asyncio.create_task(client.post("/v1/test/heavy")) for _ in range(2)]
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(client.get("/health") for _ in range(50)))
            health_s = time.perf_counter() - t0
            await asyncio.gather(*heavy)
            return answers, health_s

    with _server(max_active=1, max_queue=4) as url:
        answers, health_s = asyncio.run(scenario(url))
    assert all(a.status_code == 200 for a in answers)
    assert health_s < SLOW_S / 2, health_s  # not queued behind the heavy work
    assert any(a.json()["queue"]["active"] == 1 for a in answers)


def test_wait_longer_than_queue_timeout_is_503() -> None:
    with _server(max_active=1, max_queue=5, queue_timeout_s=0.3) as url:
        answers = asyncio.run(_burst(url, 2, "POST", "/v1/test/heavy"))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 503]
    busy = next(a for a in answers if a.status_code == 503)
    assert "no slot within 0.3 s" in busy.json()["detail"] and busy.headers["retry-after"]


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        AdmissionLimits(max_active=0)
    with pytest.raises(ConfigError):
        AdmissionLimits(max_active=100)


def test_serve_load_bench_smoke(tmp_path) -> None:
    """``radfm bench serve-load`` against a real ``radfm serve`` process: a short run, nothing written."""
    from radfm.eval.benchmarks.serve_load import run

    out = run(["--rounds", "1", "--concurrency", "20", "--no-write"])
    assert out["rows"][0]["errors"] == 0 and out["rows"][0]["requests"] == 20
    assert out["memory_mib"]["start"]["VmRSS"] > 0
