"""Admission control: heavy requests queue for a bounded number of slots; 503 only past the queue.

Why: uvicorn's ``limit_concurrency`` counted *connections* and answered 503 to the 65th, so 200
load-balancer probes of ``/health`` got 200 × 503 while nothing was working. Now:

- light paths (``/health``, the API docs) are never queued: they cost microseconds;
- every other request (uploads, inference, decoding) takes one of ``max_active`` slots; when all
  are busy it waits, up to ``max_queue`` requests deep and at most ``queue_timeout_s``;
- past the queue (or after waiting too long) the answer is 503 with ``Retry-After``, so a client
  backs off instead of piling on.

The work itself runs off the event loop: task routes are plain ``def`` functions, which Starlette
runs in its thread pool, so a model forward never blocks ``/health``. ``max_active`` stays below
that pool's size (40) so queued requests wait here, not for a thread.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LIGHT_PATHS", "Admission", "AdmissionLimits", "AdmissionMiddleware"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

#: Paths answered without a slot.
LIGHT_PATHS = frozenset({"/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
THREAD_POOL = 40  # anyio's default thread limiter, which runs sync routes


@dataclass(frozen=True)
class AdmissionLimits:
    """``max_active`` heavy requests at once, ``max_queue`` waiting, ``queue_timeout_s`` at most each."""

    max_active: int = 4
    max_queue: int = 64
    queue_timeout_s: float = 300.0
    retry_after_s: int = 5

    def __post_init__(self) -> None:
        from radfm.errors import ConfigError

        if not 1 <= self.max_active <= THREAD_POOL - 4:
            raise ConfigError(f"max_active must be 1..{THREAD_POOL - 4}, got {self.max_active}.",
                              "Heavy requests run in a thread pool of 40; the rest queue.")
        if self.max_queue < 0 or self.queue_timeout_s <= 0 or self.retry_after_s < 1:
            raise ConfigError("max_queue must be >= 0, queue_timeout_s > 0 and retry_after_s >= 1.")


class Admission:
    """The slots and the line of one app (:class:`AdmissionLimits`); shared by its middleware and ``/health``.

    ``stats()`` gives the current ``active`` / ``waiting`` counts and how many were ``refused``.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.active = 0
        self.refused = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._queue)

    def stats(self) -> dict[str, int]:
        return {"active": self.active, "waiting": self.waiting, "refused": self.refused,
                "max_active": self.limits.max_active, "max_queue": self.limits.max_queue}

    async def admit(self) -> bool:
        """Take a slot now, or wait in line for one; False when the line is full or the wait too long."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a test client): start empty
            self._loop, self.active, self._queue = loop, 0, collections.deque()
        while self._queue and self._queue[0].done():  # places given up by timed-out requests
            self._queue.popleft()
        if self.active < self.limits.max_active and self.waiting == 0:
            self.active += 1
            return True
        if self.waiting >= self.limits.max_queue:
            return False
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        try:
            await asyncio.wait_for(turn, self.limits.queue_timeout_s)
        except asyncio.TimeoutError:
            pass
        except BaseException:  # cancelled from outside (client gone, server stopping)
            if turn.done() and not turn.cancelled():
                self.release()  # the slot was handed over just now: pass it on
            turn.cancel()
            raise
        # handed a slot (possibly just as the wait ran out): it is ours; else the place is dropped
        return turn.done() and not turn.cancelled()

    def release(self) -> None:
        """Hand the slot to the first request still waiting, else free it."""
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.active -= 1


class AdmissionMiddleware:
    """ASGI middleware that puts every request but :data:`LIGHT_PATHS` through an :class:`Admission`."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in LIGHT_PATHS:
            await self.app(scope, receive, send)
            return
        gate = self.admission
        full = gate.waiting >= gate.limits.max_queue
        if not await gate.admit():
            gate.refused += 1
            await self._busy(scope, send, "the queue is full" if full else
                             f"no slot within {gate.limits.queue_timeout_s:g} s")
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.release()

    async def _busy(self, scope: Scope, send: Any, why: str) -> None:
        from radfm.serve.security import _send_json

        gate = self.admission
        scope.setdefault("state", {})["radfm_error"] = "busy"
        retry = str(max(1, math.ceil(gate.limits.retry_after_s))).encode()
        await _send_json(send, 503, {
            "detail": f"the server is busy ({why}: {gate.active} requests running, {gate.waiting} waiting).",
            "hint": f"retry after {retry.decode()} s (Retry-After header)."}, headers=[(b"retry-after", retry)])
