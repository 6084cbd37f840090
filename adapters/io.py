"""Adapters on disk: save one apart from its encoder, read its record, load it back (checked).

Layout (peft's, which the wider tooling such as vLLM and the hub reads): ``adapter_config.json`` +
``adapter_model.safetensors`` (LoRA factors and, for per-head adapters, the head copy; no base
weights, no pickle), plus what peft cannot know about a radiology model:

- ``radfm_adapter.json``: the task, the classes, the head's sizes and the base encoder (path and
  :func:`~radfm.adapters.base_encoder.encoder_sha256`), so an adapter is never applied to an
  encoder it was not trained on;
- ``preprocess_plan.json``: the input recipe (spacing, normalisation, patch) the adapter expects.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.adapters.base_encoder import check_base_encoder, encoder_of, encoder_sha256
from radfm.adapters.heads import HeadedTaskModel, fit_head, headed_base, new_head_meta
from radfm.adapters.merging import patch_pointwise_conv3d_merge
from radfm.adapters.registry import adapter_meta, registry, require_adapter, require_peft
from radfm.adapters.spec import LoraSpec
from radfm.errors import ConfigError, InputError
from radfm.preprocess.plan import PreprocessPlan

__all__ = ["ADAPTER_CONFIG", "ADAPTER_META_FILENAME", "ADAPTER_WEIGHTS", "adapter_record", "load_adapters",
           "load_encoder_adapter", "read_adapter_meta", "save_adapter", "save_encoder_adapter", "write_adapter_record",
           "write_peft_files"]

ADAPTER_META_FILENAME = "radfm_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ----------------------------------------------------------------------------- save
def write_peft_files(peft_model: Any, name: str, directory: str | Path) -> Path:
    """Write adapter ``name``'s weights and peft config (inference mode) into ``directory`` (created)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, adapter_name=name)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = copy.deepcopy(peft_model.peft_config[name])
    config.inference_mode = True
    config.save_pretrained(str(out))
    return out


def adapter_record(
    *,
    task: str,
    name: str,
    encoder: nn.Module,
    base_encoder_path: str | Path | None,
    lora: Mapping[str, Any] | None,
    modules_to_save: list[str] | None,
    label_names: Mapping[int, str] | None = None,
    head: Mapping[str, Any] | None = None,
    note: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one ``radfm_adapter.json`` layout, for every kind of adapted-model folder.

    Why one builder: LoRA adapters, encoder-only adapters and fully fine-tuned folders are all read
    by :func:`read_adapter_meta` and checked by the one base-encoder SHA-256; hand-written records
    drifted apart. ``encoder`` is the base encoder (or a model holding it) whose SHA-256 is recorded.
    """
    enc = encoder_of(encoder)
    record: dict[str, Any] = {"format": "radfm-adapter", "version": 1, "task": task, "name": name}
    if head is not None:
        record["num_classes"] = int(head["num_classes"])
    if label_names is not None:
        record["label_names"] = {str(k): str(v) for k, v in sorted(label_names.items())}
    if head is not None:
        record["head"] = dict(head)
    record["lora"] = dict(lora) if lora is not None else None
    record["modules_to_save"] = modules_to_save
    record["base_encoder"] = {"path": str(base_encoder_path) if base_encoder_path else None,
                              "sha256": encoder_sha256(enc), "config": enc.config.to_diff_dict(),
                              **({"note": note} if note else {})}
    if extra:
        record["extra"] = dict(extra)
    return record


def write_adapter_record(out: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``radfm_adapter.json`` into ``out`` (created); returns the file."""
    path = Path(out) / ADAPTER_META_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def save_adapter(
    peft_model: Any,
    name: str,
    directory: str | Path,
    *,
    task: str = "segmentation",
    plan: PreprocessPlan | None = None,
    label_names: Mapping[int, str] | None = None,
    base_encoder_path: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write adapter ``name`` (with its head) alone into ``directory`` (created), apart from the encoder.

    Files: ``adapter_config.json`` + ``adapter_model.safetensors`` (peft layout: LoRA factors and
    the head copy, no base weights), ``preprocess_plan.json`` (when ``plan`` is given) and
    ``radfm_adapter.json`` (task, num_classes, label names, head sizes, strategy facts in
    ``extra``, and the base encoder: path and :func:`encoder_sha256`). No pickle anywhere.

    ``base_encoder_path`` defaults to where the encoder was loaded from (``name_or_path``).
    """
    peft_model = require_peft(peft_model)
    require_adapter(peft_model, name)
    out = write_peft_files(peft_model, name, directory)
    if plan is not None:
        plan.save(out)

    base = peft_model.get_base_model()
    meta = adapter_meta(peft_model, name) or new_head_meta(peft_model, LoraSpec(), ["head"])
    if label_names is not None:
        meta["label_names"] = {int(k): str(v) for k, v in label_names.items()}
    if len(meta["label_names"]) != meta["head"]["num_classes"]:
        raise ConfigError(f"{len(meta['label_names'])} label names for a head of {meta['head']['num_classes']} classes.",
                          "Give one name per class, background (0) included.")
    path = base_encoder_path if base_encoder_path is not None else (base.encoder.name_or_path or None)
    record = adapter_record(task=task, name=name, encoder=base, base_encoder_path=path, lora=meta["lora"],
                            modules_to_save=meta["modules_to_save"], label_names=meta["label_names"],
                            head=meta["head"], extra=extra)
    write_adapter_record(out, record)
    registry(peft_model).meta[name] = {**meta, "record": record}
    return out


def save_encoder_adapter(
    peft_model: Any,
    directory: str | Path,
    *,
    task: str,
    base_encoder: str | Path | None = None,
    adapter_name: str = "default",
) -> Path:
    """Write the encoder's LoRA factors of ``adapter_name`` apart (peft layout + ``radfm_adapter.json``)."""
    peft_model = require_peft(peft_model)
    require_adapter(peft_model, adapter_name)
    out = write_peft_files(peft_model, adapter_name, directory)
    meta = adapter_meta(peft_model, adapter_name)
    write_adapter_record(out, adapter_record(task=task, name=adapter_name, encoder=peft_model,
                                             base_encoder_path=base_encoder, lora=meta.get("lora", {}),
                                             modules_to_save=[]))
    return out


# ----------------------------------------------------------------------------- read / load
def read_adapter_meta(directory: str | Path) -> dict[str, Any]:
    """``radfm_adapter.json`` of an adapter (or fine-tuned model) directory, with a clear error if absent."""
    path = Path(directory) / ADAPTER_META_FILENAME
    if not Path(directory).is_dir():
        raise InputError(f"adapter directory {directory} does not exist.")
    if not path.is_file():
        raise InputError(f"{directory} has no {ADAPTER_META_FILENAME}; it is not a radfm adapter directory.",
                         "Adapters are written by radfm.adapters.save_adapter or `radfm adapt`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}.") from exc


def load_adapters(
    base_model: HeadedTaskModel | Any,
    adapters: Mapping[str, str | Path],
    *,
    check_base: bool = True,
) -> Any:
    """Load several saved adapters onto one frozen base model; returns the PeftModel.

    Args:
        base_model: a ``RadFMForDenseSegmentation`` built around the encoder the adapters were trained
            on (peft cannot rebuild a custom model itself), or a PeftModel to add to.
        adapters: ``{name: directory}``; the first becomes the active adapter.
        check_base: refuse adapters whose recorded encoder SHA-256 differs from ``base_model``'s.
    Raises:
        ConfigError: encoder mismatch (naming both hashes), missing or unexpected weights.
    """
    from peft import PeftConfig, PeftModel
    from safetensors.torch import load_file

    if not adapters:
        raise InputError("load_adapters needs at least one {name: directory}.")
    peft_model = base_model if isinstance(base_model, PeftModel) else None
    base = headed_base(base_model)
    base_hash = encoder_sha256(base) if check_base else None
    first = None
    for name, directory in adapters.items():
        d = Path(directory)
        record = read_adapter_meta(d)
        _require_adapter_files(d)
        if base_hash is not None:
            check_base_encoder(record, base_hash, d / ADAPTER_META_FILENAME, name=name)
        config = PeftConfig.from_pretrained(str(d))
        config.inference_mode = True
        if peft_model is None:
            from peft import get_peft_model

            peft_model = get_peft_model(base, config, adapter_name=name)
        else:
            if name in peft_model.peft_config:
                raise InputError(f"an adapter named {name!r} is already loaded.", "Choose another name.")
            peft_model.add_adapter(name, config)
        fit_head(peft_model, name, record["head"])
        state = load_file(str(d / ADAPTER_WEIGHTS))
        result = _set_state(peft_model, state, name)
        if result:
            raise ConfigError(f"adapter {name!r} ({d}) does not fit this base model: {result}.")
        registry(peft_model).meta[name] = {
            "lora": record.get("lora", {}), "modules_to_save": record.get("modules_to_save", ["head"]),
            "head": record["head"], "label_names": {int(k): v for k, v in record["label_names"].items()},
            "record": record,
        }
        first = first or name
    peft_model.set_adapter(first, inference_mode=True)
    peft_model.eval()
    return peft_model


def _require_adapter_files(d: Path) -> None:
    """One check, one error type, for both kinds of adapter folder."""
    if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{d} is not a LoRA adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}).",
                          "A fully fine-tuned model folder is loaded whole (load_adapted in "
                          "radfm.tasks.dense_segmentation.checkpoint), not as an adapter.")


def _set_state(peft_model: Any, state: dict[str, torch.Tensor], name: str) -> str:
    """Load one adapter's weights; returns a description of what did not fit ("" when all did)."""
    from peft.utils import set_peft_model_state_dict

    res = set_peft_model_state_dict(peft_model, state, adapter_name=name)
    missing = [k for k in res.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
    problems = []
    if res.unexpected_keys:
        problems.append(f"unexpected keys {list(res.unexpected_keys)[:5]}")
    if missing:
        problems.append(f"missing keys {missing[:5]}")
    return "; ".join(problems)


def load_encoder_adapter(model: nn.Module, directory: str | Path, *, merge: bool = True,
                         check_base: bool = True) -> Any:
    """Apply an adapter written by :func:`save_encoder_adapter` to ``model``; merged by default.

    Raises ConfigError when the adapter was trained on another encoder (SHA-256 recorded at save
    time) or its weights do not fit this model.
    """
    from peft import PeftConfig, get_peft_model
    from safetensors.torch import load_file

    d = Path(directory)
    _require_adapter_files(d)
    meta_file = d / ADAPTER_META_FILENAME
    if check_base and meta_file.is_file():
        check_base_encoder(read_adapter_meta(d), encoder_sha256(model), meta_file)
    config = PeftConfig.from_pretrained(str(d))
    config.inference_mode = True
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5 (FutureWarning noise)
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config, adapter_name="default")
    problems = _set_state(peft_model, load_file(str(d / ADAPTER_WEIGHTS)), "default")
    if problems:
        raise ConfigError(f"the adapter in {d} does not fit this model: {problems}.")
    if not merge:
        return peft_model
    patch_pointwise_conv3d_merge(peft_model)
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()
