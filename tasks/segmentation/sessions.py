"""Interactive prompt-segmentation sessions: a volume embedded once, then many clicks.

A :class:`Session` holds one :class:`SegPredictor` with its volume set (the image embedding
cached), the previous result (the next click's mask prompt) and, for a DICOM series, the folder
of the uploaded files (a DICOM SEG must reference them). A :class:`SessionStore` keeps them
within two limits, because each holds a preprocessed volume and its embedding in memory:

- an idle time-to-live (``ttl_s``): a session not used for that long is dropped; every use
  restarts its clock;
- a total memory cap (``max_bytes``): the estimated bytes of all sessions; when a new or grown
  session passes it, the least recently used *other* sessions are dropped until it fits.

Expiry is lazy (checked on every store access), so no background thread is needed; an expired
session's memory is freed at the next request. The store is per process: behind several worker
processes a client must be routed back to the process that made its session.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radfm.errors import InputError, ResourceError

log = logging.getLogger("radfm.serve.sessions")

__all__ = ["Session", "SessionNotFoundError", "SessionStore", "estimate_nbytes"]


_GONE = "no such session: the id is unknown, or the session expired, was evicted or was deleted."


class SessionNotFoundError(InputError):
    """The session id is unknown, expired, evicted or deleted (HTTP 404)."""

    http_status = 404


def _tensors(obj: Any, seen: set[int], depth: int = 0) -> Iterator[torch.Tensor | np.ndarray]:
    """Every tensor / array reachable from ``obj`` through attributes and containers, once each.

    Models (``torch.nn.Module``) are skipped: they are shared between sessions.
    """
    if depth > 6 or id(obj) in seen or obj is None or isinstance(obj, str | bytes | int | float | bool):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor | np.ndarray):
        yield obj
        return
    if isinstance(obj, torch.nn.Module):
        return
    if isinstance(obj, dict):
        children: Any = obj.values()
    elif isinstance(obj, list | tuple | set | frozenset):
        children = obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        children = (getattr(obj, f.name, None) for f in fields(obj))
    elif hasattr(obj, "__dict__") and not callable(obj):
        children = vars(obj).values()
    else:
        return
    for child in children:
        yield from _tensors(child, seen, depth + 1)


def estimate_nbytes(*objs: Any) -> int:
    """Bytes of the tensors and arrays held by ``objs`` (e.g. a predictor and its last result).

    Why a walk and not named fields: the predictor's prepared tensor and embedding cache are its
    own business (and change); summing what is reachable counts whatever it keeps. Storage shared
    by several views is counted once (by data pointer).
    """
    seen: set[int] = set()
    pointers: set[int] = set()
    total = 0
    for obj in objs:
        for t in _tensors(obj, seen):
            if isinstance(t, torch.Tensor):
                ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
            else:
                base = t.base if isinstance(t.base, np.ndarray) else t
                ptr, nbytes = base.__array_interface__["data"][0], base.nbytes
            if ptr and ptr in pointers:
                continue
            pointers.add(ptr)
            total += int(nbytes)
    return total


@dataclass
class Session:
    """One interactive session. ``predictor`` has ``volume`` set; ``previous`` is the last result."""

    id: str
    predictor: Any
    volume: Any
    source_dir: Path | None = None  # kept DICOM series folder (DICOM SEG output), deleted with the session
    previous: Any = None
    nbytes: int = 0
    clicks: int = 0
    last_used: float = 0.0
    dropped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def measure(self) -> int:
        """Re-estimate the bytes this session holds (the embedding cache grows with new windows)."""
        self.nbytes = estimate_nbytes(self.predictor, self.volume, self.previous)
        return self.nbytes

    @contextmanager
    def use(self) -> Iterator[Session]:
        """Hold the session for one click (a predictor answers one prompt at a time).

        If the store dropped the session meanwhile, the last holder frees it on the way out.
        """
        try:
            with self.lock:
                if self.dropped:  # deleted or evicted between the look-up and this click
                    raise self._gone()
                yield self
        finally:
            self._close_if_dropped()

    def drop(self) -> None:
        """Mark the session gone and free it now, or as soon as the click in flight ends.

        Why not wait for the click: a thread evicting others while holding its own session's lock
        would deadlock against one doing the same the other way round.
        """
        self.dropped = True
        self._close_if_dropped()

    def _close_if_dropped(self) -> None:
        if self.dropped and self.lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self.lock.release()

    def _close(self) -> None:
        """Free the embedding and delete the kept DICOM files (idempotent)."""
        with contextlib.suppress(Exception):  # dropping the references below frees the rest anyway
            self.predictor.reset_volume()
        self.previous = None
        if self.source_dir is not None:
            shutil.rmtree(self.source_dir, ignore_errors=True)


class SessionStore:
    """Sessions by id, with an idle TTL and a total memory cap (LRU eviction). Thread-safe.

    Args:
        ttl_s: idle seconds before a session expires (> 0).
        max_bytes: cap on the summed :meth:`Session.measure` of all sessions (> 0).
        clock: monotonic seconds; a public attribute so tests can move time on.
    """

    def __init__(self, *, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_bytes <= 0:
            raise ValueError(f"ttl_s and max_bytes must be > 0, got {ttl_s}, {max_bytes}")
        self.ttl_s = float(ttl_s)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    # --- bookkeeping --------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def expires_in_s(self, session: Session) -> float:
        return max(0.0, session.last_used + self.ttl_s - self.clock())

    def _expire(self) -> None:
        now = self.clock()
        for sid in [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s]:
            log.info("session expired (idle > %.0f s)", self.ttl_s)
            self._sessions.pop(sid).drop()

    def _fit(self, keep: str) -> None:
        """Evict least recently used sessions other than ``keep`` until the total fits the cap."""
        total = sum(s.nbytes for s in self._sessions.values())
        for sid in list(self._sessions):
            if total <= self.max_bytes:
                break
            if sid == keep:
                continue
            victim = self._sessions.pop(sid)
            total -= victim.nbytes
            log.info("session evicted (memory cap %d MB reached)", self.max_bytes // 2**20)
            victim.drop()

    def _gone(self) -> SessionNotFoundError:
        return SessionNotFoundError(_GONE, f"Sessions expire after {self.ttl_s:.0f} s idle and are evicted (least "
                                    "recently used first) when the server's session memory cap is reached; create "
                                    "a new one with POST /v1/sessions.")

    # --- public -------------------------------------------------------------------------------
    def add(self, predictor: Any, volume: Any, *, source_dir: Path | None = None) -> Session:
        """Register a predictor whose volume is set; evicts others if needed. 413 when it alone is too big."""
        session = Session(id=secrets.token_urlsafe(16), predictor=predictor, volume=volume, source_dir=source_dir)
        session.measure()
        if session.nbytes > self.max_bytes:
            session.drop()
            raise ResourceError(f"this image needs about {session.nbytes / 2**20:.0f} MB as a session, more than the "
                                f"server's session memory cap of {self.max_bytes / 2**20:.0f} MB.",
                                "Use POST /v1/segment for one-shot prompts, or raise the cap "
                                "(--session-max-mb / RADFM_SESSION_MAX_MB).")
        with self._lock:
            self._expire()
            session.last_used = self.clock()
            self._sessions[session.id] = session
            self._fit(keep=session.id)
        return session

    def get(self, session_id: str) -> Session:
        """The live session (its clock restarted, now most recently used), else 404."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise self._gone()
            session.last_used = self.clock()
            self._sessions.move_to_end(session_id)
            return session

    def touch(self, session: Session) -> None:
        """After a click: re-measure the session, restart its clock, evict others if it grew past the cap."""
        session.measure()
        with self._lock:
            if session.id not in self._sessions:  # deleted or evicted while the click ran
                return
            session.last_used = self.clock()
            self._sessions.move_to_end(session.id)
            self._fit(keep=session.id)

    def delete(self, session_id: str) -> None:
        """Drop a session now; 404 when it is not there."""
        with self._lock:
            self._expire()
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise self._gone()
        session.drop()

    def close(self) -> None:
        """Drop every session (server shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.drop()
