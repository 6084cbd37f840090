"""LoRA adapters (peft) on the shared encoder: attach, save apart, load several, switch, merge.

Why peft and not our own LoRA: peft already covers ``Linear`` and ``Conv3d``, keeps a per-adapter
copy of the task head (``modules_to_save``), switches adapters in place and merges them for export,
and its on-disk layout (``adapter_config.json`` + ``adapter_model.safetensors``) is what the wider
tooling (vLLM, the hub) reads. We add what peft cannot know about a radiology model:

- ``radfm_adapter.json``: the task, the classes, the head's sizes and the base encoder (path and a
  SHA-256 of its weights), so an adapter is never applied to an encoder it was not trained on;
- ``preprocess_plan.json``: the input recipe (spacing, normalisation, patch) the adapter expects;
- heads of different sizes per adapter (tasks have different classes): peft would copy the base
  head for every adapter, so the copy is rebuilt at the adapter's size before its weights load.

Module names (see ``radfm.models.encoder``): LoRA targets ``qkv``, ``attn.proj``, ``fc1``, ``fc2``
(and optionally ``patch_embed.proj``, ``pyramid.lateral.N``); the task head is ``head``.

Per-adapter heads (:func:`attach_lora` … :func:`merge`) work on any :class:`HeadedTaskModel`: a
task model that says how its head is sized and built (the dense segmentation model of
``radfm.tasks.dense_segmentation`` is one). Why a protocol and not the class: adapters sit below
tasks and never import them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.errors import ConfigError, InputError
from radfm.preprocess.plan import PreprocessPlan

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_META_FILENAME",
    "DEFAULT_TARGETS",
    "HeadedTaskModel",
    "LoraSpec",
    "adapter_meta",
    "add_adapter",
    "attach_encoder_lora",
    "attach_lora",
    "encoder_sha256",
    "inject_encoder_lora",
    "load_adapters",
    "load_encoder_adapter",
    "merge",
    "merge_injected_lora",
    "read_adapter_meta",
    "save_adapter",
    "save_encoder_adapter",
    "trainable_parameters",
    "use_adapter",
]

ADAPTER_META_FILENAME = "radfm_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "attn.proj", "fc1", "fc2")
#: The 1×1 ``lateral`` convs of the encoder's feature pyramid (``include_pyramid``).
PYRAMID_TARGETS: tuple[str, ...] = tuple(f"pyramid.lateral.{i}" for i in range(4))


def cnn_lora_targets(encoder_config: Any) -> tuple[str, ...]:
    """peft suffixes of a CNN trunk's residual convs (``stages.S.B.conv1/2``: names only the encoder has)."""
    return tuple(f"stages.{s}.{b}.conv{k}" for s, n in enumerate(encoder_config.cnn_blocks)
                 for b in range(n) for k in (1, 2))


def resolve_spec(spec: LoraSpec | None, encoder: nn.Module | None) -> LoraSpec:
    """``spec`` made valid for ``encoder``'s architecture.

    Why: recipes name ViT layers (the default targets, the pyramid laterals); on a CNN trunk those
    layers do not exist, so the ViT defaults become the trunk's residual convs.
    """
    spec = spec or LoraSpec()
    cfg = getattr(encoder, "config", None)
    if getattr(cfg, "architecture", "vit") != "cnn":
        return spec
    targets = spec.targets if spec.targets != DEFAULT_TARGETS else cnn_lora_targets(cfg)
    from dataclasses import replace

    return replace(spec, targets=tuple(targets), include_pyramid=False, include_patch_embed=False)


@dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how much.

    Attributes:
        r: rank of each update ``ΔW = B A`` (``A``: r × in, ``B``: out × r).
        alpha: scaling numerator, the update is ``(alpha / r) · B A`` (peft's ``lora_alpha``).
        dropout: dropout on the LoRA branch input.
        targets: module-name suffixes (peft ``target_modules``); ``()`` with no ``include_*`` means
            no LoRA at all: only ``modules_to_save`` train (the dense "linear probe").
        include_patch_embed: also adapt the patch embedding Conv3d (``patch_embed.proj``): useful when
            the new data's intensities differ from pretraining (another modality, sequence).
        include_pyramid: also adapt the pyramid's 1×1 ``lateral`` convs (Conv3d): cheap, and they are
            the only trainable route into the pyramid when MAE pretraining left it untrained.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    include_patch_embed: bool = False
    include_pyramid: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"LoRA rank r must be >= 1, got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        object.__setattr__(self, "targets", tuple(self.targets))

    def target_modules(self) -> list[str]:
        """peft ``target_modules`` (suffix match), empty for a head-only adapter."""
        names = list(self.targets)
        if self.include_patch_embed:
            names.append("patch_embed.proj")
        if self.include_pyramid:
            names.extend(PYRAMID_TARGETS)
        return names

    def to_peft_config(self, modules_to_save: Sequence[str] = ("head",)) -> Any:
        """A peft ``LoraConfig``; no targets → peft's dummy target (only ``modules_to_save`` train)."""
        from peft import LoraConfig
        from peft.utils.constants import DUMMY_TARGET_MODULES

        targets = self.target_modules()
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets if targets else DUMMY_TARGET_MODULES,
            modules_to_save=list(modules_to_save) or None,
            bias="none",
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


@runtime_checkable
class HeadedTaskModel(Protocol):
    """A task model whose head peft copies per adapter: a shared ``encoder``, a ``head`` module, and
    the config fields (``head_fields``, integers on ``config``) that size the head.

    ``build_head(spec)`` returns a fresh head of the sizes in ``spec`` (an adapter for other classes).
    """

    head_fields: ClassVar[tuple[str, ...]]
    encoder: nn.Module
    head: nn.Module

    def head_spec(self) -> dict[str, int]: ...

    def build_head(self, spec: Mapping[str, int]) -> nn.Module: ...


@dataclass
class _Registry:
    """radfm facts about the adapters of one PeftModel (peft's config knows nothing of heads)."""

    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def _base(model: nn.Module) -> HeadedTaskModel:
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, HeadedTaskModel):
        raise InputError(
            f"expected a task model with a per-adapter head (HeadedTaskModel, e.g. RadFMForDenseSegmentation) "
            f"or a PeftModel around one, got {type(base).__name__}.",
            "Build it with RadFMForDenseSegmentation.from_encoder(encoder, num_classes) "
            "(radfm.tasks.dense_segmentation.model).",
        )
    return base


def _encoder_of(model: nn.Module) -> nn.Module:
    """The shared encoder of ``model`` (a RadFMEncoder, a task model with ``.encoder``, or a PeftModel)."""
    from peft import PeftModel

    from radfm.models.encoder import RadFMEncoder

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if isinstance(base, RadFMEncoder):
        return base
    encoder = getattr(base, "encoder", None)
    if encoder is None:
        raise InputError(f"{type(base).__name__} has no shared encoder (.encoder).",
                         "LoRA adapters in radfm adapt the shared RadFMEncoder of a task model.")
    return encoder


def _registry(peft_model: nn.Module) -> _Registry:
    reg = getattr(peft_model, "_radfm_registry", None)
    if reg is None:
        reg = _Registry()
        peft_model._radfm_registry = reg  # plain attribute: not a parameter, not saved by peft
    return reg


def _require_peft(model: nn.Module) -> Any:
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise InputError(f"expected a peft PeftModel, got {type(model).__name__}.",
                         "Wrap the model first with attach_lora(model, name, spec) or load_adapters(...).")
    return model


def _require_adapter(peft_model: Any, name: str) -> None:
    if name not in peft_model.peft_config:
        raise InputError(f"no adapter named {name!r}.", f"Loaded adapters: {sorted(peft_model.peft_config)}.")


def encoder_sha256(model: nn.Module) -> str:
    """SHA-256 of the base encoder's weights (names, dtypes, shapes, bytes), LoRA layers ignored.

    Why the weights and not the file: the same weights saved twice (or re-sharded) must match, and
    an adapter trained on one encoder must be refused on another. Accepts a ``RadFMEncoder``, any
    task model whose ``encoder`` is one, or a PeftModel around either.
    """
    encoder = _encoder_of(model)
    h = hashlib.sha256()
    entries = {}
    for name, tensor in encoder.state_dict().items():
        if "lora_" in name:
            continue
        entries[name.replace(".base_layer", "")] = tensor
    for name in sorted(entries):
        t = entries[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _head_wrapper(peft_model: Any) -> Any:
    from peft.utils.other import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    head = getattr(base, "head", None)
    return head if isinstance(head, ModulesToSaveWrapper) else None


def _fit_head(peft_model: Any, name: str, spec: Mapping[str, int]) -> None:
    """Give adapter ``name`` a fresh head of size ``spec`` when it differs from the base head's."""
    base = peft_model.get_base_model()
    wrapper = _head_wrapper(peft_model)
    fields = base.head_fields
    if wrapper is None or name not in wrapper.modules_to_save:
        if any(int(spec[k]) != int(getattr(base.config, k)) for k in fields):
            raise ConfigError(
                f"adapter {name!r} needs a head {dict(spec)} but 'head' is not in its modules_to_save.",
                "Save task heads with modules_to_save=('head',).",
            )
        return
    if all(int(spec[k]) == int(getattr(base.config, k)) for k in fields):
        return
    head = base.build_head(spec)
    p = next(wrapper.original_module.parameters())
    wrapper.modules_to_save[name] = head.to(device=p.device, dtype=p.dtype)


def adapter_meta(peft_model: nn.Module, name: str) -> dict[str, Any]:
    """radfm facts about adapter ``name`` (task, classes, head, base encoder) recorded so far."""
    return dict(_registry(peft_model).meta.get(name, {}))


# ----------------------------------------------------------------------------- attach / add
def attach_lora(
    model: HeadedTaskModel,
    name: str,
    spec: LoraSpec | None = None,
    *,
    modules_to_save: Sequence[str] = ("head",),
) -> Any:
    """Wrap ``model`` with peft and add a first, trainable adapter ``name``; returns the PeftModel.

    The encoder's own weights are frozen (LoRA trains ``B A`` beside them); ``modules_to_save``
    (default the head) get a trainable per-adapter copy. ``model`` is modified in place (peft
    replaces the targeted layers) and is ``peft_model.get_base_model()`` afterwards.
    """
    from peft import get_peft_model

    base = _base(model)
    spec = resolve_spec(spec, getattr(base, "encoder", None))
    peft_model = get_peft_model(base, spec.to_peft_config(modules_to_save), adapter_name=name)
    _registry(peft_model).meta[name] = _new_meta(peft_model, spec, modules_to_save)
    return peft_model


def add_adapter(
    peft_model: Any,
    name: str,
    spec: LoraSpec | None = None,
    *,
    modules_to_save: Sequence[str] = ("head",),
    num_classes: int | None = None,
) -> None:
    """Add another trainable adapter ``name`` beside the loaded ones and make it the active one.

    ``num_classes``: classes of this adapter's head when they differ from the base head's (a new
    task); its head copy is then built fresh at that size.
    """
    peft_model = _require_peft(peft_model)
    spec = resolve_spec(spec, getattr(peft_model.get_base_model(), "encoder", None))
    peft_model.add_adapter(name, spec.to_peft_config(modules_to_save))
    peft_model.set_adapter(name)
    base = peft_model.get_base_model()
    if num_classes is not None and num_classes != base.config.num_classes:
        if "head" not in modules_to_save:
            raise ConfigError("num_classes differs from the base head but 'head' is not in modules_to_save.")
        _fit_head(peft_model, name, {**base.head_spec(), "num_classes": int(num_classes)})
        peft_model.set_adapter(name)  # marks the new head copy trainable
    _registry(peft_model).meta[name] = _new_meta(peft_model, spec, modules_to_save, num_classes=num_classes)


def _new_meta(peft_model: Any, spec: LoraSpec, modules_to_save: Sequence[str],
              num_classes: int | None = None) -> dict[str, Any]:
    base = peft_model.get_base_model()
    hs = base.head_spec()
    if num_classes is not None:
        hs["num_classes"] = int(num_classes)
    names = dict(base.config.id2label) if hs["num_classes"] == base.config.num_classes else {
        0: "background", **{i: f"class_{i}" for i in range(1, hs["num_classes"])}}
    return {"lora": spec.to_dict(), "modules_to_save": list(modules_to_save), "head": hs,
            "label_names": {int(k): str(v) for k, v in names.items()}}


# ----------------------------------------------------------------------------- save / load
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
    """Write adapter ``name`` alone into ``directory`` (created), apart from the encoder.

    Files: ``adapter_config.json`` + ``adapter_model.safetensors`` (peft layout: LoRA factors and
    the head copy, no base weights), ``preprocess_plan.json`` (when ``plan`` is given) and
    ``radfm_adapter.json`` (task, num_classes, label names, head sizes, strategy facts in
    ``extra``, and the base encoder: path and :func:`encoder_sha256`). No pickle anywhere.

    ``base_encoder_path`` defaults to where the encoder was loaded from (``name_or_path``).
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_model = _require_peft(peft_model)
    _require_adapter(peft_model, name)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, adapter_name=name)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = copy.deepcopy(peft_model.peft_config[name])
    config.inference_mode = True
    config.save_pretrained(str(out))
    if plan is not None:
        plan.save(out)

    base = peft_model.get_base_model()
    meta = adapter_meta(peft_model, name) or _new_meta(peft_model, LoraSpec(), ["head"])
    if label_names is not None:
        meta["label_names"] = {int(k): str(v) for k, v in label_names.items()}
    if len(meta["label_names"]) != meta["head"]["num_classes"]:
        raise ConfigError(f"{len(meta['label_names'])} label names for a head of {meta['head']['num_classes']} classes.",
                          "Give one name per class, background (0) included.")
    path = base_encoder_path if base_encoder_path is not None else (base.encoder.name_or_path or None)
    record = {
        "format": "radfm-adapter",
        "version": 1,
        "task": task,
        "name": name,
        "num_classes": meta["head"]["num_classes"],
        "label_names": {str(k): v for k, v in sorted(meta["label_names"].items())},
        "head": meta["head"],
        "lora": meta["lora"],
        "modules_to_save": meta["modules_to_save"],
        "base_encoder": {"path": str(path) if path else None, "sha256": encoder_sha256(base),
                         "config": base.config.encoder_config.to_diff_dict()},
        **({"extra": dict(extra)} if extra else {}),
    }
    (out / ADAPTER_META_FILENAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
    _registry(peft_model).meta[name] = {**meta, "record": record}
    return out


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
    base = _base(base_model)
    base_hash = encoder_sha256(base) if check_base else None
    first = None
    for name, directory in adapters.items():
        d = Path(directory)
        record = read_adapter_meta(d)
        if not (d / ADAPTER_WEIGHTS).is_file() or not (d / ADAPTER_CONFIG).is_file():
            raise InputError(f"{d} lacks {ADAPTER_CONFIG} or {ADAPTER_WEIGHTS}.",
                             "A fully fine-tuned model directory is loaded with radfm.adapters.load_adapted.")
        want = record.get("base_encoder", {}).get("sha256")
        if check_base and want and want != base_hash:
            raise ConfigError(
                f"adapter {name!r} ({d}) was trained on encoder {want[:12]}… "
                f"({record['base_encoder'].get('path')}), but the base model's encoder is {base_hash[:12]}….",
                "Build the base model from the encoder named in radfm_adapter.json.",
            )
        config = PeftConfig.from_pretrained(str(d))
        config.inference_mode = True
        if peft_model is None:
            from peft import get_peft_model

            peft_model = get_peft_model(base, config, adapter_name=name)
        else:
            if name in peft_model.peft_config:
                raise InputError(f"an adapter named {name!r} is already loaded.", "Choose another name.")
            peft_model.add_adapter(name, config)
        _fit_head(peft_model, name, record["head"])
        state = load_file(str(d / ADAPTER_WEIGHTS))
        result = _set_state(peft_model, state, name)
        if result:
            raise ConfigError(f"adapter {name!r} ({d}) does not fit this base model: {result}.")
        _registry(peft_model).meta[name] = {
            "lora": record.get("lora", {}), "modules_to_save": record.get("modules_to_save", ["head"]),
            "head": record["head"], "label_names": {int(k): v for k, v in record["label_names"].items()},
            "record": record,
        }
        first = first or name
    peft_model.set_adapter(first, inference_mode=True)
    peft_model.eval()
    return peft_model


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


# ----------------------------------------------------------------------------- use / merge / count
def use_adapter(peft_model: Any, name: str, *, trainable: bool = False) -> Any:
    """Make adapter ``name`` the active one (per request: cheap, no weights move); returns the model.

    ``trainable=False`` keeps every adapter frozen (serving); ``True`` unfreezes this one (training).
    """
    peft_model = _require_peft(peft_model)
    _require_adapter(peft_model, name)
    peft_model.set_adapter(name, inference_mode=not trainable)
    return peft_model


def merge(peft_model: Any, name: str) -> HeadedTaskModel:
    """A plain task model (e.g. ``RadFMForDenseSegmentation``) with adapter ``name`` folded in (export).

    LoRA updates are added to their layers (``W + (alpha/r) B A``) and the adapter's head becomes
    ``head``; the config gets the adapter's classes. Works on a deep copy: ``peft_model`` and its
    other adapters are left as they were.
    """
    peft_model = _require_peft(peft_model)
    _require_adapter(peft_model, name)
    meta = adapter_meta(peft_model, name)
    reg = peft_model.__dict__.pop("_radfm_registry", None)  # keep the registry out of the copy
    try:
        work = copy.deepcopy(peft_model)
    finally:
        if reg is not None:
            peft_model._radfm_registry = reg
    work.set_adapter(name, inference_mode=True)
    _patch_pointwise_conv3d_merge(work)
    merged = work.merge_and_unload(adapter_names=[name])
    classifier = merged.head.classifier
    k = int(classifier.out_channels)
    names = meta.get("label_names") or {0: "background", **{i: f"class_{i}" for i in range(1, k)}}
    merged.config.num_classes = k
    for f in merged.head_fields:
        if f != "num_classes" and f in meta.get("head", {}):
            setattr(merged.config, f, int(meta["head"][f]))
    merged.config.id2label = {int(i): str(v) for i, v in names.items()}
    merged.config.label2id = {v: i for i, v in merged.config.id2label.items()}
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()


def _patch_pointwise_conv3d_merge(peft_model: Any) -> None:
    """Fix peft 0.21's merge of LoRA on 1×1×1 Conv3d layers (on this copy of the model only).

    peft takes any conv whose kernel's first two spatial sizes are 1 for a 1×1 Conv2d and squeezes
    two axes, which fails for a ``(out, in, 1, 1, 1)`` kernel (size mismatch at merge time). The
    delta of a pointwise conv is the plain matrix product ``scaling · B A`` with three unit axes.
    """
    import types

    from peft.tuners.lora.layer import Conv3d as LoraConv3d

    def delta(self: Any, adapter: str) -> torch.Tensor:
        a = self.lora_A[adapter].weight.float().flatten(1)  # (r, in)
        b = self.lora_B[adapter].weight.float().flatten(1)  # (out, r)
        out = (b @ a)[:, :, None, None, None] * self.scaling[adapter]
        return out.to(self.lora_A[adapter].weight.dtype)

    for module in peft_model.modules():
        if isinstance(module, LoraConv3d) and tuple(module.get_base_layer().kernel_size) == (1, 1, 1):
            module.get_delta_weight = types.MethodType(delta, module)


def trainable_parameters(model: nn.Module) -> dict[str, float]:
    """``{"trainable", "total", "percent"}`` parameters of the model as it runs now.

    For a PeftModel, ``total`` counts what the active adapter's forward uses: the base weights, the
    active LoRA factors and head copy, but not peft's frozen original head or other adapters' copies
    (counting those would flatter the percentage with weights that never run together).
    """
    from peft import PeftModel

    skip: list[str] = []
    if isinstance(model, PeftModel):
        active = model.active_adapter
        skip = [f".{n}." for n in model.peft_config if n != active] + [".original_module."]
    trainable = total = 0
    seen: set[int] = set()
    for pname, p in model.named_parameters():
        if id(p) in seen or any(s in f".{pname}." for s in skip):
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"trainable": int(trainable), "total": int(total),
            "percent": float(100.0 * trainable / total) if total else 0.0}


# ----------------------------------------------------------------------------- encoder-only adapters
# Task models whose head ships in the task's own weights (prompt segmentation, registration, the
# report bridge) keep one adapter: LoRA factors on the shared encoder, saved apart in the same peft
# layout + radfm_adapter.json, and usually merged at load so inference runs without peft.
def attach_encoder_lora(
    model: nn.Module,
    spec: LoraSpec | None = None,
    *,
    trainable_modules: Sequence[str] = (),
    adapter_name: str = "default",
) -> Any:
    """Wrap ``model`` with peft LoRA on its encoder; ``trainable_modules`` (attribute names) stay trainable.

    Unlike :func:`attach_lora`, the head is not a per-adapter peft copy: it belongs to the task
    model and is saved with it, so the adapter directory holds only the encoder's LoRA factors.
    """
    from peft import get_peft_model

    encoder = _encoder_of(model)
    spec = resolve_spec(spec, encoder)
    peft_model = get_peft_model(model, spec.to_peft_config(modules_to_save=()), adapter_name=adapter_name)
    for name in trainable_modules:
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    _registry(peft_model).meta[adapter_name] = {"lora": spec.to_dict(), "modules_to_save": []}
    return peft_model


def save_encoder_adapter(
    peft_model: Any,
    directory: str | Path,
    *,
    task: str,
    base_encoder: str | Path | None = None,
    adapter_name: str = "default",
) -> Path:
    """Write the encoder's LoRA factors of ``adapter_name`` apart (peft layout + ``radfm_adapter.json``)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_model = _require_peft(peft_model)
    _require_adapter(peft_model, adapter_name)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = copy.deepcopy(peft_model.peft_config[adapter_name])
    config.inference_mode = True
    config.save_pretrained(str(out))
    encoder = _encoder_of(peft_model)
    meta = adapter_meta(peft_model, adapter_name)
    record = {"format": "radfm-adapter", "version": 1, "task": task, "name": adapter_name,
              "lora": meta.get("lora", {}), "modules_to_save": [],
              "base_encoder": {"path": str(base_encoder) if base_encoder else None,
                               "sha256": encoder_sha256(encoder), "config": encoder.config.to_diff_dict()}}
    (out / ADAPTER_META_FILENAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def load_encoder_adapter(model: nn.Module, directory: str | Path, *, merge: bool = True,
                         check_base: bool = True) -> Any:
    """Apply an adapter written by :func:`save_encoder_adapter` to ``model``; merged by default.

    Raises ConfigError when the adapter was trained on another encoder (SHA-256 recorded at save
    time) or its weights do not fit this model.
    """
    import warnings

    from peft import PeftConfig, get_peft_model
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{d} is not a LoRA adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}).")
    if check_base and (d / ADAPTER_META_FILENAME).is_file():
        want = read_adapter_meta(d).get("base_encoder", {}).get("sha256")
        have = encoder_sha256(model)
        if want and want != have:
            raise ConfigError(f"the adapter in {d} was trained on encoder {want[:12]}…, this model's encoder is "
                              f"{have[:12]}….", "Use the encoder (model folder) the adapter was trained with.")
    config = PeftConfig.from_pretrained(str(d))
    config.inference_mode = True
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5 (FutureWarning noise)
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config, adapter_name="default")
    res = set_peft_model_state_dict(peft_model, load_file(str(d / ADAPTER_WEIGHTS)), adapter_name="default")
    if res.unexpected_keys:
        raise ConfigError(f"the adapter in {d} does not fit this model: unexpected keys {list(res.unexpected_keys)[:5]}.")
    if not merge:
        return peft_model
    _patch_pointwise_conv3d_merge(peft_model)
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval()


def inject_encoder_lora(model: nn.Module, spec: LoraSpec | None = None, *, adapter_name: str = "default") -> nn.Module:
    """Add LoRA layers to ``model.encoder`` in place (no PeftModel wrapper); only they train.

    For task trainers that fold the update back into their own checkpoint with
    :func:`merge_injected_lora` (a shipped model that loads without peft). Returns the encoder.
    """
    from peft import inject_adapter_in_model

    encoder = _encoder_of(model)
    spec = resolve_spec(spec, encoder)
    inject_adapter_in_model(spec.to_peft_config(modules_to_save=()), encoder, adapter_name=adapter_name)
    for n, p in encoder.named_parameters():
        p.requires_grad_("lora_" in n)
    return encoder


def merge_injected_lora(module: nn.Module) -> int:
    """Fold every LoRA layer under ``module`` into its base layer and put the plain layer back.

    Returns how many layers were merged. Pointwise Conv3d layers get the fixed merge of
    :func:`_patch_pointwise_conv3d_merge`.
    """
    from peft.tuners.lora import LoraLayer

    _patch_pointwise_conv3d_merge(module)
    n = 0
    for name, layer in list(module.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], layer.get_base_layer())
            n += 1
    return n
