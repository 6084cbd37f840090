"""API keys and the ASGI middlewares that guard every request: key, size, time, logging.

Why plain ASGI middlewares (not FastAPI dependencies or ``BaseHTTPMiddleware``): they run before
routing, so *every* path — ``/health``, ``/docs``, 404s, and routers that other packages add —
needs the key without each router remembering it; and they see the request body as it streams,
so an oversized upload is refused on its ``Content-Length`` or as soon as it passes the limit,
before a multipart parser spools it to disk.

Logging policy: radiology requests carry PHI (images, DICOM headers, report text). The access log
written here has method, path (never the query string), status, size and duration; no bodies,
no headers, no file names, no error messages of user errors. Unexpected exceptions are logged as
their type and location only unless ``log_details`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import stat
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from radfm.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("radfm.serve.access")
log = logging.getLogger("radfm.serve")

API_KEY_ENV = "RADFM_API_KEY"
MIN_KEY_LENGTH = 16

__all__ = [
    "API_KEY_ENV",
    "APIKeyMiddleware",
    "AccessLogMiddleware",
    "BodySizeLimitMiddleware",
    "TimeoutMiddleware",
    "key_matches",
    "load_api_keys",
]


# ------------------------------------------------------------------------------------ keys
def load_api_keys(api_key_file: str | Path | None = None, *, env: str = API_KEY_ENV) -> tuple[str, ...]:
    """The accepted API keys: one per non-empty, non-``#`` line of ``api_key_file``, else ``$RADFM_API_KEY``.

    Several lines allow key rotation. A key shorter than 16 characters, or none at all, is a
    :class:`ConfigError`: a server that reads medical images must not start open. The key's value
    never appears in a message.
    """
    keys: list[str] = []
    if api_key_file:
        path = Path(api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}.") from None
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("API key file %s is readable by group/others; chmod 600 it", path)
        except OSError:
            pass
        keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        source = f"the API key file {path}"
    else:
        value = os.environ.get(env, "").strip()
        keys = [value] if value else []
        source = f"${env}"
    if not keys:
        raise ConfigError(f"no API key configured (looked in {source}).",
                          f"Set {env} or pass --api-key-file FILE (one key per line, ≥ {MIN_KEY_LENGTH} chars); "
                          "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ConfigError(f"API key(s) in {source} shorter than {MIN_KEY_LENGTH} characters.",
                          "Use a random key, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return tuple(keys)


def key_matches(supplied: str | None, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every accepted key (no early exit on the first match)."""
    if not supplied:
        return False
    s = supplied.encode("utf-8", "surrogateescape")
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(s, k.encode("utf-8"))
    return ok


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------ middlewares
class APIKeyMiddleware:
    """401 unless ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` matches; on every path but ``public_paths``."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], public_paths: frozenset[str] = frozenset()) -> None:
        if not keys:
            raise ConfigError("the API key middleware needs at least one key.")
        self.app = app
        self.keys = keys
        self.public_paths = public_paths  # GET only: static pages that hold no data (the viewer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        supplied = _header(scope, b"x-api-key")
        if supplied is None:
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            supplied = token.strip() if scheme.lower() == "bearer" else None
        if key_matches(supplied, self.keys):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        scope.setdefault("state", {})["radfm_error"] = "auth"
        await _send_json(send, 401, {"detail": "missing or wrong API key",
                                     "hint": "send the header X-API-Key: KEY or Authorization: Bearer KEY"},
                         headers=[(b"www-authenticate", b"Bearer")])


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes``: on ``Content-Length`` first, else while streaming.

    Why both: a client may send no ``Content-Length`` (chunked upload) or a false one. When the
    limit is passed mid-stream, reading stops at once and whatever response the app would have
    produced from the truncated body (FastAPI answers 400 "error parsing the body") is replaced
    by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self) -> dict[str, Any]:
        mb = self.max_bytes / 2**20
        return {"detail": f"request body larger than the server's limit of {mb:g} MB",
                "hint": "send a smaller file, or start the server with a larger --max-upload-mb"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if length > self.max_bytes:
                await _send_json(send, 413, self._too_large(), headers=[(b"connection", b"close")])
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app answered a truncated body: drop its answer, ours follows
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await _send_json(send, 413, self._too_large(), headers=[(b"connection", b"close")])


class TimeoutMiddleware:
    """504 when a request takes longer than ``timeout_s`` (upload + work).

    Why: a wedged backend must not hold client connections forever. Work already handed to a
    thread (a transformers ``generate``) is not interrupted; it finishes and its answer is dropped.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except asyncio.TimeoutError:
            scope.setdefault("state", {})["radfm_error"] = "timeout"
            if not started:
                await _send_json(send, 504, {"detail": f"request took longer than {self.timeout_s:g} s"})


class AccessLogMiddleware:
    """One log line per request without PHI, and a JSON 500 for any exception nothing else handled.

    Why it also catches exceptions: Starlette's outermost error middleware re-raises after
    answering, and the server then logs the traceback *with the exception message*, which may
    quote patient data. Here the exception is logged as type and location only (full traceback
    when ``log_details``), and the client gets a generic 500.
    """

    def __init__(self, app: ASGIApp, *, log_details: bool = False) -> None:
        self.app = app
        self.log_details = log_details

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0
        size = 0

        async def logging_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        except Exception as exc:
            if self.log_details:
                log.error("unhandled error on %s %s:\n%s", scope.get("method"), scope.get("path"),
                          "".join(traceback.format_exception(exc)))
            else:
                tb = traceback.extract_tb(exc.__traceback__)
                where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
                log.error("unhandled %s at %s on %s %s (message withheld: may contain PHI; "
                          "start with --log-details to see it)", type(exc).__name__, where,
                          scope.get("method"), scope.get("path"))
            if status == 0:
                await _send_json(logging_send, 500, {"detail": "internal server error"})
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %s %d %dB %.0fms", client[0], scope.get("method"), scope.get("path"),
                            status, size, 1000 * (time.perf_counter() - t0))
