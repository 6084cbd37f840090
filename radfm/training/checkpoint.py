"""Resumable training checkpoints without pickles.

A checkpoint is a folder ``<output_dir>/checkpoints/step_00001200/`` holding

- ``config.json`` + ``model.safetensors``: the whole model (MAE encoder + decoder);
- ``optimizer.safetensors``: every tensor of the optimizer state, flattened to
  ``state.<param index>.<name>`` (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``);
- ``trainer_state.json``: step, param groups (lr, betas, weight decay …), the LR scheduler's
  scalars, the seed scheme and the recipe.

Why no pickles: ``torch.save`` checkpoints execute code when loaded and cannot be inspected;
safetensors + JSON can be read by anything and trusted. ``torch.load`` is never used.

Why no RNG state files: the training loop derives every random draw of step ``s`` on rank ``r``
(data, masks, drop-path) from ``(seed, r, s)``, so the step number alone restores the streams.

A checkpoint is written into ``<name>.tmp`` and renamed when complete, so a crash mid-write
never leaves a folder that ``latest_checkpoint`` would pick.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from radfm.errors import ConfigError

__all__ = [
    "flatten_optimizer_state",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "unflatten_optimizer_state",
]

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state_scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (JSON lists back to tuples, e.g. ``betas``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta.get("state_scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write a complete checkpoint folder (see the module docstring). ``model`` is unwrapped
    (not DDP); ``state`` holds JSON-able scalars (``step`` required)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if hasattr(model, "config"):
        model.config.save_pretrained(tmp)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
    payload = {**state, "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in {STATE_FILE}")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir/checkpoints``, or ``None``."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def load_checkpoint(
    directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Restore ``model`` (unwrapped), and ``optimizer``/``scheduler`` when given, in place;
    returns the JSON state (``step`` …)."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise ConfigError(f"{directory} is not a complete radfm checkpoint (no {STATE_FILE}).")
    state = json.loads((directory / STATE_FILE).read_text())
    weights = load_file(str(directory / MODEL_FILE))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {directory} does not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]}).",
            "Resume with the recipe that wrote it (its copy is in trainer_state.json under 'config').",
        )
    if optimizer is not None:
        device = next(model.parameters()).device
        tensors = {k: v.to(device) for k, v in load_file(str(directory / OPTIMIZER_FILE)).items()}
        optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    root = Path(output_dir) / "checkpoints"
    done = sorted((p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
