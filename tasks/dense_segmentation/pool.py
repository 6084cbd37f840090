"""Many task adapters on one shared encoder per process, switched per request (``radfm serve``).

Why: every ``radfm adapt`` folder is a few hundred kB of LoRA factors and a head over the *same*
base encoder. Loading each as its own model (:func:`~radfm.tasks.dense_segmentation.checkpoint.load_adapted`)
copies the encoder once per task; here adapters that name the same encoder (SHA-256 in
``radfm_adapter.json``) are loaded onto one base through :func:`radfm.adapters.load_adapters` and
the active adapter is switched for each request under a lock (peft's switch is model-wide state,
so two requests on one base never run at once). Fully fine-tuned folders carry their own encoder
and are loaded whole.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.preprocess.plan import PreprocessPlan

__all__ = ["AdapterPool", "PooledAdapter", "UnknownAdapterError"]


class UnknownAdapterError(InputError):
    """A request named an adapter this server does not hold (HTTP 404)."""

    http_status = 404


@dataclass(frozen=True)
class PooledAdapter:
    """One served adapter: its model (shared with the others on its encoder), plan and classes."""

    name: str
    model: nn.Module
    plan: PreprocessPlan
    label_names: dict[int, str]
    encoder_sha256: str
    lock: threading.Lock
    strategy: str

    def describe(self, shared_by: int) -> dict[str, Any]:
        """What ``GET /v1/adapters`` lists (no server paths)."""
        return {"name": self.name, "strategy": self.strategy,
                "classes": [v for k, v in sorted(self.label_names.items()) if k > 0],
                "encoder_sha256": self.encoder_sha256[:12], "encoder_shared_by": shared_by}


class AdapterPool:
    """``{name: adapter folder}`` loaded with one encoder per distinct base encoder."""

    def __init__(self, adapters: Mapping[str, str | Path]) -> None:
        from radfm.adapters import load_adapters, read_adapter_meta
        from radfm.tasks.dense_segmentation.checkpoint import load_adapted, load_encoder
        from radfm.tasks.dense_segmentation.model import RadFMForDenseSegmentation

        self._entries: dict[str, PooledAdapter] = {}
        groups: dict[str, dict[str, Path]] = {}
        records: dict[str, dict[str, Any]] = {}
        for name, folder in adapters.items():
            record = read_adapter_meta(folder)
            if record.get("task") not in (None, "segmentation"):
                raise ConfigError(f"adapter {name!r} ({Path(folder).name}) is a {record.get('task')!r} adapter, "
                                  "not a dense segmentation one.", "Give folders written by `radfm adapt`.")
            records[name] = record
            sha = (record.get("base_encoder") or {}).get("sha256") or ""
            if record.get("extra", {}).get("strategy") == "full":
                model, plan, names = load_adapted(folder)
                self._add(name, model, plan, names, sha, threading.Lock(), "full")
            else:
                groups.setdefault(sha, {})[name] = Path(folder)
        for sha, members in groups.items():
            first = records[next(iter(members))]
            path = (first.get("base_encoder") or {}).get("path")
            if not path:
                raise ConfigError(f"adapter {next(iter(members))!r} names no base encoder path.")
            head = first["head"]
            names0 = {int(k): str(v) for k, v in first["label_names"].items()}
            base = RadFMForDenseSegmentation.from_encoder(
                load_encoder(path), int(head["num_classes"]), id2label=names0,
                head_channels=int(head["head_channels"]), fuse_channels=int(head["fuse_channels"]),
                skip_channels=int(head["skip_channels"]))
            model = load_adapters(base, members)  # SHA-256 of the encoder checked for each
            lock = threading.Lock()
            for name, folder in members.items():
                names = {int(k): str(v) for k, v in records[name]["label_names"].items()}
                self._add(name, model, PreprocessPlan.load(folder), names, sha, lock,
                          records[name].get("extra", {}).get("strategy", "lora"))

    def _add(self, name: str, model: nn.Module, plan: PreprocessPlan, names: dict[int, str], sha: str,
             lock: threading.Lock, strategy: str) -> None:
        self._entries[name] = PooledAdapter(name, model.eval(), plan, names, sha, lock, strategy)

    def names(self) -> list[str]:
        return list(self._entries)

    def describe(self) -> list[dict[str, Any]]:
        """Every adapter with how many adapters share its encoder copy."""
        counts: dict[int, int] = {}
        for e in self._entries.values():
            counts[id(e.model)] = counts.get(id(e.model), 0) + 1
        return [e.describe(counts[id(e.model)]) for e in self._entries.values()]

    def encoder_copies(self) -> int:
        """How many encoder copies the pool holds (one per distinct base, one per full fine-tune)."""
        return len({id(e.model) for e in self._entries.values()})

    def get(self, name: str) -> PooledAdapter:
        if name not in self._entries:
            raise UnknownAdapterError(f"no adapter named {name!r} on this server.",
                                      f"Served adapters: {', '.join(self._entries) or 'none'} "
                                      "(radfm serve --task-adapter NAME=DIR).")
        return self._entries[name]

    def predict(self, name: str, volume: Volume, *, bf16: bool = False) -> np.ndarray:
        """Label map of adapter ``name`` on ``volume``'s canonical grid (the adapter switched in first)."""
        from radfm.tasks.dense_segmentation.inference import predict_volume

        entry = self.get(name)
        with entry.lock:
            if entry.strategy != "full":
                entry.model.set_adapter(name, inference_mode=True)
            return predict_volume(entry.model, entry.plan, volume, bf16=bf16)
