"""The radfm HTTP service: a FastAPI app guarded by an API key, with routers found by name.

``create_app(settings, backend=…, model_dirs=…)`` builds the app. Task routers (``/v1/report``,
``/v1/segment``, …) are not imported here: each task registers a callable under the entry-point
group ``radfm.routes`` (``report = "radfm.tasks.report.routes:routes"``) that takes the
:class:`ServeState` and returns an ``APIRouter``. Why: the core must not import tasks (DESIGN.md),
and a deployment serves whichever tasks are installed.

Every path needs the API key, ``/health`` included (load balancers send the key too); bodies are
capped while they stream; user errors (:class:`radfm.errors.RadfmError`) become a 4xx JSON
``{"detail": problem, "hint": hint, "type": class}`` scrubbed of header values and temp paths
(:mod:`radfm.serve.errors`); nothing of a request's content is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool

from radfm import __version__, registry
from radfm.errors import ConfigError, InputError, RadfmError, ResourceError
from radfm.registry import UnknownComponentError
from radfm.serve.admission import Admission, AdmissionLimits, AdmissionMiddleware
from radfm.serve.backends import BackendUnavailableError, LLMBackend
from radfm.serve.errors import install_handlers
from radfm.serve.security import (
    AccessLogMiddleware,
    APIKeyMiddleware,
    BodySizeLimitMiddleware,
    TimeoutMiddleware,
)
from radfm.serve.uploads import REQUEST_UPLOADS, RequestUploads, UploadLimits
from radfm.serve.viewer import PUBLIC_PATHS, viewer_router

log = logging.getLogger("radfm.serve")

ROUTES_GROUP = "radfm.routes"

__all__ = ["ROUTES_GROUP", "ServeSettings", "ServeState", "create_app", "status_for"]


@dataclass(frozen=True)
class ServeSettings:
    """Server settings. ``api_keys`` never appear in ``repr`` (and so never in a log line).

    Attributes:
        api_keys: accepted keys (see :func:`radfm.serve.security.load_api_keys`); at least one.
        host, port: where ``radfm serve`` binds; 127.0.0.1 unless told otherwise.
        max_upload_bytes: request body cap (413 above it), 512 MB by default.
        max_zip_members, max_extracted_bytes: caps on what a zipped DICOM series unpacks to.
        request_timeout_s: 504 after this long (upload + work); 0 disables.
        log_details: log full tracebacks of unexpected errors (their messages may quote PHI).
        tmp_dir: where uploads are unpacked (default: the system temp dir).
        routers: names in ``radfm.routes`` to mount; None mounts every installed one.
        session_ttl_s: idle seconds before an interactive session (``/v1/sessions``) expires.
        session_max_bytes: memory cap of all interactive sessions together (least recently used
            evicted first); each holds a preprocessed volume and its image embedding.
        max_active, max_queue, queue_timeout_s, retry_after_s: admission control
            (:mod:`radfm.serve.admission`): heavy requests running at once, waiting for a slot
            (503 with ``Retry-After`` past it), longest wait; ``/health`` is never queued.
        dicomweb_url: the PACS (DICOMweb root) that ``POST /v1/pacs/segment`` reads from and
            stores DICOM SEG objects into; None: that route answers 400.
        task_adapters: ``(name, folder)`` of the task adapters served on one shared encoder
            (``radfm serve --task-adapter NAME=DIR``, ``/v1/adapters``); adapters over the same
            base encoder share one copy of it and are switched per request.
    """

    api_keys: tuple[str, ...] = field(repr=False, default=())
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 512 * 2**20
    max_zip_members: int = 20_000
    max_extracted_bytes: int = 4 * 2**30
    request_timeout_s: float = 600.0
    log_details: bool = False
    tmp_dir: Path | None = None
    routers: tuple[str, ...] | None = None
    session_ttl_s: float = 900.0
    session_max_bytes: int = 2 * 2**30
    max_active: int = 4
    max_queue: int = 64
    queue_timeout_s: float = 300.0
    retry_after_s: int = 5
    dicomweb_url: str | None = None
    task_adapters: tuple[tuple[str, Path], ...] = ()

    @property
    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(max_active=self.max_active, max_queue=self.max_queue,
                               queue_timeout_s=self.queue_timeout_s, retry_after_s=self.retry_after_s)

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(max_bytes=self.max_upload_bytes, max_zip_members=self.max_zip_members,
                            max_extracted_bytes=self.max_extracted_bytes)


@dataclass
class ServeState:
    """What routers get: the settings, the LLM backend (None when no LLM is served) and model folders.

    ``model_dirs`` maps a task name (``"report"``, ``"segmentation"``) to its checkpoint folder.
    """

    settings: ServeSettings
    backend: LLMBackend | None
    model_dirs: dict[str, Path]
    extras: dict[str, Any] = field(default_factory=dict)  # routers may cache loaded models here

    def require_backend(self) -> LLMBackend:
        """The backend, or a 503 explaining that this server runs without an LLM."""
        if self.backend is None:
            raise BackendUnavailableError("this server was started without an LLM backend")
        return self.backend

    def model_dir(self, name: str) -> Path:
        """The folder of model ``name``; a 503 ``ConfigError`` naming the missing setting otherwise."""
        if name not in self.model_dirs:
            err = ConfigError(f"this server has no {name!r} model configured.",
                              f"Start it with radfm serve --model-dir {name}=DIR.")
            err.http_status = 503  # type: ignore[attr-defined]
            raise err
        return self.model_dirs[name]


def status_for(exc: BaseException) -> int:
    """HTTP status of an error: its ``http_status`` attribute, else by class."""
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, UnknownComponentError):
        return 404
    if isinstance(exc, ResourceError):
        return 413
    if isinstance(exc, InputError | ConfigError | RadfmError):
        return 400
    if isinstance(exc, BackendUnavailableError):
        return 503
    return 500


class _UploadScopeMiddleware:
    """Give each request its upload limits and delete its temporary files after the response."""

    def __init__(self, app: Any, limits: UploadLimits, tmp_root: Path | None) -> None:
        self.app = app
        self.limits = limits
        self.tmp_root = tmp_root

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        uploads = RequestUploads(limits=self.limits, tmp_root=self.tmp_root)
        token = REQUEST_UPLOADS.set(uploads)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_UPLOADS.reset(token)
            uploads.cleanup()


def _adapter_list(backend: Any) -> list[str] | None:
    adapters = getattr(backend, "adapter_names", None)
    try:
        return list(adapters()) if callable(adapters) else []
    except Exception:  # an unreachable backend: /health still answers, and asks again next time
        return None


def create_app(settings: ServeSettings, *, backend: LLMBackend | None,
               model_dirs: Mapping[str, str | Path] | None = None) -> FastAPI:
    """Build the service. Routers come from the ``radfm.routes`` entry points (see module docstring).

    A router that fails to load is logged and listed under ``routers_failed`` in ``/health``; the
    others are still served. Raises :class:`ConfigError` when ``settings.api_keys`` is empty.
    """
    if not settings.api_keys:
        raise ConfigError("the server needs an API key.", "Set RADFM_API_KEY or pass --api-key-file.")
    state = ServeState(settings=settings, backend=backend,
                       model_dirs={k: Path(v) for k, v in (model_dirs or {}).items()})
    admission = Admission(settings.admission_limits)
    state.extras["admission"] = admission
    app = FastAPI(title="radfm", version=__version__,
                  description="radfm inference service. Research software: every output is a draft "
                              "for review by a qualified reader. Every route needs the API key.")
    app.state.radfm = state

    install_handlers(app, status_for)  # every error body scrubbed: no header value, no temp path

    loaded: list[str] = []
    failed: dict[str, str] = {}
    names = registry.available(ROUTES_GROUP) if settings.routers is None else list(settings.routers)
    for name in names:
        try:
            router = registry.load(ROUTES_GROUP, name)(state)
            if not isinstance(router, APIRouter):
                raise TypeError(f"routes({name!r}) returned {type(router).__name__}, not an APIRouter")
            app.include_router(router)
            loaded.append(name)
        except Exception as exc:  # one broken task must not take the others down
            if settings.routers is not None:
                raise
            log.error("router %r not mounted: %s: %s", name, type(exc).__name__, exc)
            failed[name] = f"{type(exc).__name__}: {exc}"
    state.extras["routers"] = loaded
    app.include_router(viewer_router())  # /viewer: static, no data; its API calls carry the key

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness, what this server serves and its queue (needs the API key like every route).

        ``async`` and never queued: it runs on the event loop, needs no worker thread, and answers
        while every slot is busy. The backend's adapter list (an HTTP call for vLLM) is asked once,
        in a thread.
        """
        adapters = state.extras.get("adapters")
        if adapters is None:
            adapters = state.extras["adapters"] = await run_in_threadpool(_adapter_list, backend)
        return {"status": "ok", "version": __version__,
                "backend": getattr(backend, "name", None), "adapters": adapters or [],
                "models": sorted(state.model_dirs), "routers": loaded, "routers_failed": failed,
                "queue": admission.stats()}

    # Added innermost first: the access log (outermost) sees every answer, the key check comes
    # before anything reads the body, the upload scope wraps only authorised, size-checked requests.
    app.add_middleware(_UploadScopeMiddleware, limits=settings.upload_limits, tmp_root=settings.tmp_dir)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(AdmissionMiddleware, admission=admission)  # queue wait not counted in the timeout
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys, public_paths=PUBLIC_PATHS)
    app.add_middleware(AccessLogMiddleware, log_details=settings.log_details)
    return app
