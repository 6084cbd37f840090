"""Files on disk: the encoder an adapter starts from, and the adapter folder it becomes.

``load_encoder`` reads a ``RadFMEncoder.save_pretrained`` folder (default: the starter encoder);
``save_adapted`` writes what :func:`~radfm.tasks.dense_segmentation.api.adapt` trained (the peft
adapter layout for "linear"/"lora", no encoder copy; a whole model for "full"), always with
``preprocess_plan.json`` and ``radfm_adapter.json``; ``load_adapted`` rebuilds it for inference.

Label ids: the adapter predicts class indices 0..K-1 (0 = background) named in ``label_names``;
``radfm_adapter.json`` records which source label ids each class was made from.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (torchvision shim before transformers/peft)
from radfm.adapters.io import (
    ADAPTER_META_FILENAME,
    adapter_record,
    load_adapters,
    read_adapter_meta,
    save_adapter,
    write_adapter_record,
)
from radfm.errors import ConfigError, InputError
from radfm.models.encoder import RadFMEncoder
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.dense_segmentation.model import RadFMForDenseSegmentation
from radfm.weights import quiet_hub_progress

__all__ = ["default_encoder_dir", "load_adapted", "load_encoder", "resolve_encoder_dir",
           "save_adapted"]


def default_encoder_dir() -> Path:
    """The starter encoder shipped with radfm (``radfm.starter``), or a ConfigError saying how to get one."""
    candidate: Path | None = None
    with contextlib.suppress(Exception):  # the starter package may not offer the helper yet
        from radfm import starter

        fn = getattr(starter, "starter_encoder_path", None)
        candidate = Path(fn()) if fn is not None else Path(starter.__file__).parent / "encoder"
    if candidate is not None and (candidate / "config.json").is_file():
        return candidate
    raise ConfigError(
        "no encoder given and no starter encoder installed (radfm/starter/encoder/ is missing).",
        "Pass --encoder DIR / encoder=DIR: a folder written by RadFMEncoder.save_pretrained (for example "
        "by MAE pretraining, `radfm pretrain`), or reinstall radfm with its starter weights.",
    )


def resolve_encoder_dir(path: str | Path | None) -> Path:
    """The folder holding the encoder's ``config.json``: ``path`` or its ``encoder/`` (``None``: the starter)."""
    if path is None:
        return default_encoder_dir()
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"encoder directory {p} does not exist.",
                         "Give a folder written by RadFMEncoder.save_pretrained (config.json + model.safetensors).")
    for d in (p, p / "encoder"):
        if (d / "config.json").is_file():
            return d
    raise InputError(f"{p} holds no config.json.",
                     "Give a folder written by RadFMEncoder.save_pretrained (config.json + model.safetensors).")


def load_encoder(path: str | Path | None) -> RadFMEncoder:
    """``RadFMEncoder.from_pretrained`` of a directory (``None``: the starter encoder)."""
    d = resolve_encoder_dir(path)
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise InputError(f"{d / 'config.json'} is not valid JSON: {exc}.") from exc
    if model_type != "radfm_encoder":
        raise InputError(f"{d} holds a {model_type!r} model, not a radfm encoder (model_type 'radfm_encoder').",
                         "Point --encoder at the encoder folder (e.g. radfm/starter/encoder/).")
    # float32 whatever the file holds (the starter ships bfloat16): training needs fp32 master weights.
    with quiet_hub_progress():
        encoder = RadFMEncoder.from_pretrained(str(d), dtype=torch.float32)
    encoder.name_or_path = str(d.resolve())
    return encoder.eval()


def load_adapted(directory: str | Path, *, encoder: str | Path | None = None,
                 device: str | torch.device = "cpu") -> tuple[nn.Module, PreprocessPlan, dict[int, str]]:
    """``(model, plan, label_names)`` of a directory written by :func:`~radfm.tasks.dense_segmentation.api.adapt`, ready for :func:`~radfm.tasks.dense_segmentation.inference.predict_volume`.

    LoRA / head adapters are rebuilt on their base encoder (``encoder`` overrides the path recorded in
    ``radfm_adapter.json``; its weights must hash the same); full fine-tunes load whole.
    """
    d = Path(directory)
    record = read_adapter_meta(d)
    plan = PreprocessPlan.load(d)
    names = {int(k): str(v) for k, v in record["label_names"].items()}
    strategy = record.get("extra", {}).get("strategy", "lora")
    if strategy == "full":
        with quiet_hub_progress():
            model = RadFMForDenseSegmentation.from_pretrained(str(d))
    else:
        path = encoder or record.get("base_encoder", {}).get("path")
        if not path:
            raise ConfigError(f"{d / ADAPTER_META_FILENAME} names no base encoder path.",
                              "Pass encoder=DIR (the encoder the adapter was trained on).")
        enc = load_encoder(path)
        head = record["head"]
        base = RadFMForDenseSegmentation.from_encoder(
            enc, int(head["num_classes"]), id2label=names, head_channels=int(head["head_channels"]),
            fuse_channels=int(head["fuse_channels"]), skip_channels=int(head["skip_channels"]))
        model = load_adapters(base, {record.get("name", "task"): d})
    return model.to(device).eval(), plan, names


def save_adapted(model: nn.Module, strategy: str, out: Path, *, plan: PreprocessPlan, classes: dict[int, str], task: str,
          enc_dir: Path, encoder_model: RadFMEncoder, extra: dict[str, Any]) -> None:
    """Adapter layout for "linear"/"lora" (peft files, no encoder copy); a whole model for "full"."""
    if strategy in ("linear", "lora"):
        save_adapter(model, "task", out, task=task, plan=plan, label_names=classes,
                     base_encoder_path=enc_dir.resolve(), extra=extra)
        return
    out.mkdir(parents=True, exist_ok=True)
    with quiet_hub_progress():
        model.save_pretrained(str(out))
    plan.save(out)
    cfg = model.config
    head = {k: int(getattr(cfg, k)) for k in ("num_classes", "head_channels", "fuse_channels", "skip_channels")}
    write_adapter_record(out, adapter_record(
        task=task, name="task", encoder=encoder_model, base_encoder_path=enc_dir.resolve(), lora=None,
        modules_to_save=None, label_names=classes, head=head, extra=extra,
        note="fully fine-tuned: the encoder weights are in model.safetensors here"))
