"""Few-shot adaptation of the shared encoder to a segmentation task: ``adapt(...)`` → an adapter dir.

Three strategies, from cheapest to most expressive:

- ``"linear"`` (the dense "linear probe", called *head* in the docs): the encoder is frozen, only
  the dense head trains. It shows what the pretrained features already separate.
- ``"lora"``: LoRA on the encoder's attention/MLP layers (and the pyramid's 1×1 laterals) + the head.
- ``"full"``: every weight trains (encoder at a tenth of the head's learning rate).

``"auto"`` picks by the number of labelled cases K (:func:`choose_strategy`):

==========  =============================  ====================================================
K           choice                         why
==========  =============================  ====================================================
K ≤ 2       LoRA r=4, strong augmentation  two volumes cannot constrain millions of weights; a
                                           rank-4 update keeps the pretrained features and the
                                           stronger augmentation stands in for the missing cases
3 ≤ K ≤ 10  LoRA r=8                       the usual few-shot sweet spot: enough data to bend the
                                           features, still < 5 % of the weights (small preset)
11 ≤ K ≤ 50 LoRA r=16                      more data, more rank; still saves a small adapter
K > 50      full fine-tuning               enough data to move every weight without overfitting
==========  =============================  ====================================================

Training (:func:`fit`) is the same for every strategy and for outside baselines (a MONAI UNet in
``radfm bench fewshot``): patches with foreground oversampling (class first, then voxel, as
nnU-Net), flips / small scaling / intensity augmentation, Dice + cross-entropy (MONAI
``DiceCELoss``), AdamW with warm-up and cosine decay, optional bf16 autocast (CPU too), a seed
that fixes everything. Inference (:func:`predict_volume`) is ``apply_plan`` → sliding windows →
``restore_to_input``, so predictions land on the input's own canonical grid.

Label ids: the adapter predicts class indices 0..K-1 (0 = background) named in ``label_names``;
``radfm_adapter.json`` records which source label ids each class was made from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import radfm  # noqa: F401  (torchvision shim before transformers/peft)
from radfm.adapters.lora import (
    ADAPTER_META_FILENAME,
    LoraSpec,
    attach_lora,
    encoder_sha256,
    load_adapters,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
)
from radfm.check import require_valid
from radfm.data.patches import canonical_to_model, extract_patch, sample_patch_centers
from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.metrics import dice_score
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import MODALITY_IDS
from radfm.models.heads import RadFMForDenseSegmentation
from radfm.preprocess.plan import PLAN_FILENAME, PreprocessPlan, apply_plan, restore_to_input

log = logging.getLogger(__name__)

__all__ = [
    "AdaptResult",
    "AugmentConfig",
    "PreparedCase",
    "TrainConfig",
    "adapt",
    "build_model",
    "choose_strategy",
    "default_encoder_dir",
    "fit",
    "load_adapted",
    "load_encoder",
    "make_plan",
    "predict_volume",
    "prepare_case",
    "sliding_window_logits",
]

Strategy = Literal["auto", "linear", "lora", "full"]
STRATEGIES: tuple[str, ...] = ("auto", "linear", "lora", "full")
TASKS: tuple[str, ...] = ("segmentation",)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of ``(B, C, D, H, W)`` patches (labels follow the geometry).

    Attributes:
        flip_axes: model axes (0 = D/z, 1 = H/y, 2 = W/x) that may be mirrored, each with
            ``flip_prob``. Default: not x (left-right), because label sets carry laterality
            (left/right kidney) and the liver/spleen asymmetry is a strong cue.
        scale_range, scale_prob: isotropic zoom factor drawn per patch (trilinear image, nearest label).
        intensity_scale, intensity_shift: ``x * U(1 ± s) + U(± b)`` on normalised intensities.
        noise_std: Gaussian noise with a std drawn from ``U(0, noise_std)``.
    """

    flip_axes: tuple[int, ...] = (0, 1)
    flip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    scale_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.03

    @classmethod
    def strong(cls) -> AugmentConfig:
        """For K ≤ 2: every patch is zoomed and intensities vary more."""
        return cls(scale_range=(0.8, 1.2), scale_prob=0.6, intensity_scale=0.2, intensity_shift=0.15,
                   noise_std=0.05)

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(flip_axes=(), scale_prob=0.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """One training run of :func:`fit`.

    Attributes:
        steps: optimiser steps; batch_size: patches per step; patch_size: ``(D, H, W)`` voxels.
        lr: peak learning rate of the head, LoRA factors and scratch models; ``encoder_lr_scale``
            multiplies it for pretrained encoder weights that train (full fine-tuning).
        weight_decay, warmup_fraction: AdamW decay; linear warm-up share of the steps (then cosine
            decay to 5 % of the peak).
        fg_fraction: expected share of patches centred on a foreground voxel.
        augment: :class:`AugmentConfig`; bf16: autocast matmuls/convs to bfloat16 (CPU or GPU).
        seed: fixes patch choice, augmentation, initialisation and dropout.
    """

    steps: int = 200
    patch_size: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = 2
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    fg_fraction: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bf16: bool = False
    seed: int = 0


def choose_strategy(shots: int) -> tuple[str, LoraSpec | None, AugmentConfig]:
    """``(strategy, LoRA spec or None, augmentation)`` for K = ``shots`` labelled cases (see module doc)."""
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}.")
    if shots <= 2:
        return "lora", LoraSpec(r=4, alpha=8.0, include_pyramid=True), AugmentConfig.strong()
    if shots <= 10:
        return "lora", LoraSpec(r=8, alpha=16.0, include_pyramid=True), AugmentConfig()
    if shots <= 50:
        return "lora", LoraSpec(r=16, alpha=32.0, include_pyramid=True), AugmentConfig()
    return "full", None, AugmentConfig()


def default_steps(shots: int) -> int:
    """Steps when none are given: a floor for one case, a little more per extra case, capped for CPU."""
    return int(min(150 + 25 * shots, 600))


@dataclass
class PreparedCase:
    """One case in model space.

    Attributes:
        case_id: its id in the data; image: ``(C, D, H, W)`` float32 after ``apply_plan``;
        label: ``(D, H, W)`` uint8 class indices on the same (resampled, padded) grid;
        modality_id: ``MODALITY_IDS`` value or ``None``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    modality_id: int | None = None


@dataclass
class AdaptResult:
    """What :func:`adapt` produced.

    Attributes:
        out_dir: the adapter directory (load it with :func:`load_adapted`).
        metrics: training loss, time, steps and, when unused labelled cases existed, held-out Dice.
        trainable: :func:`~radfm.adapters.lora.trainable_parameters` of the trained model.
        strategy: the strategy actually used ("auto" resolved); train_cases: ids used for training.
    """

    out_dir: Path
    metrics: dict[str, Any]
    trainable: dict[str, float]
    strategy: str = ""
    train_cases: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- encoders
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


def _encoder_dir(path: str | Path | None) -> Path:
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


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bars from transformers: our own progress bar is the one that matters."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_encoder(path: str | Path | None) -> RadFMEncoder:
    """``RadFMEncoder.from_pretrained`` of a directory (``None``: the starter encoder)."""
    d = _encoder_dir(path)
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise InputError(f"{d / 'config.json'} is not valid JSON: {exc}.") from exc
    if model_type != "radfm_encoder":
        raise InputError(f"{d} holds a {model_type!r} model, not a radfm encoder (model_type 'radfm_encoder').",
                         "Point --encoder at the encoder folder (e.g. radfm/starter/encoder/).")
    # float32 whatever the file holds (the starter ships bfloat16): training needs fp32 master weights.
    with _quiet_transformers():
        encoder = RadFMEncoder.from_pretrained(str(d), dtype=torch.float32)
    encoder.name_or_path = str(d.resolve())
    return encoder.eval()


# ----------------------------------------------------------------------------- data
@dataclass
class _CaseRef:
    case_id: str
    load: Callable[[], tuple[Volume, Volume]]


def _phantom_row_case(row: Mapping[str, Any]) -> tuple[Volume, Volume]:
    affine = np.asarray(row["affine"], dtype=np.float64)
    modality = row.get("modality") or "unknown"
    image = Volume(np.asarray(row["image"], dtype=np.float32), affine, modality=modality,
                   meta={"simulated": True})
    label = Volume(np.asarray(row["labels"]).astype(np.uint8), affine, modality=modality)
    return image, label


def _collect(data: Any) -> tuple[list[_CaseRef], dict[int, str]]:
    """Case references (loaded lazily) and the label names the data declares (may be empty)."""
    import datasets

    names: dict[int, str] = {}
    if isinstance(data, (str, Path)):
        from radfm.data.datasets import load_cases

        p = Path(data)
        if not p.exists():
            raise InputError(f"data path {p} does not exist.",
                             "Give a dataset folder (MSD / nnU-Net layout) or a manifest (.csv/.json/.jsonl).")
        data = load_cases(p)
    if isinstance(data, datasets.Dataset):
        with contextlib.suppress(Exception):
            desc = json.loads(data.info.description or "{}")
            names = {int(k): str(v) for k, v in (desc.get("labels") or {}).items()}
            if desc.get("layout") == "nnunet":  # nnU-Net v2 maps name -> id
                names = {int(v): str(k) for k, v in (desc.get("labels") or {}).items() if str(v).isdigit()}
        feat = data.features.get("image")
        if isinstance(feat, (datasets.Array3D, datasets.Array4D)):
            if "labels" not in data.column_names:
                raise InputError("the dataset has images but no 'labels' column.")
            if "label_names" in data.column_names and len(data):
                names = {int(k): v for k, v in json.loads(data[0]["label_names"]).items()}
            rows = data.with_format("numpy")
            ids = data["case_id"] if "case_id" in data.column_names else [f"case_{i}" for i in range(len(data))]
            refs = [_CaseRef(str(ids[i]), (lambda i=i: _phantom_row_case(rows[i]))) for i in range(len(data))]
            return refs, names
        from radfm.data.datasets import load_case

        refs = []
        for i in range(len(data)):
            row = data[i]
            if not row.get("label"):
                continue

            def _load(row: Mapping[str, Any] = row) -> tuple[Volume, Volume]:
                case = load_case(row)
                return case["image"], case["label"]

            refs.append(_CaseRef(str(row.get("case_id") or f"case_{i}"), _load))
        if not refs:
            raise InputError("no labelled cases in the data (every 'label' is empty).",
                             "Few-shot adaptation needs label maps for the training cases.")
        return refs, names
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        refs = []
        for i, item in enumerate(data):
            if hasattr(item, "image") and hasattr(item, "labels"):  # a PhantomCase
                if not names:
                    names = dict(getattr(item, "label_names", {}) or {})
                pair = (item.image, item.labels)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pair = (item[0], item[1])
            else:
                raise InputError(f"data item {i} is neither an (image, label) pair nor a PhantomCase.")
            if not all(isinstance(v, Volume) for v in pair):
                raise InputError(f"data item {i}: image and label must be radfm Volumes (radfm.io.load_volume).")
            refs.append(_CaseRef(f"case_{i}", (lambda pair=pair: pair)))
        if not refs:
            raise InputError("data is an empty list.")
        return refs, names
    raise InputError(f"unsupported data of type {type(data).__name__}.",
                     "Give a dataset folder or manifest, a datasets.Dataset, or a list of (image, label) Volumes.")


def _class_map(label_names: Mapping[int, str]) -> tuple[dict[int, str], dict[int, int], dict[int, list[int]]]:
    """``{source id: name}`` (ids sharing a name merge) → (class names, source → class, class → sources)."""
    classes: dict[int, str] = {0: "background"}
    to_class: dict[int, int] = {}
    sources: dict[int, list[int]] = {}
    by_name: dict[str, int] = {}
    for sid, name in label_names.items():
        sid = int(sid)
        if sid == 0:
            continue
        if name not in by_name:
            by_name[name] = len(classes)
            classes[by_name[name]] = str(name)
        to_class[sid] = by_name[name]
        sources.setdefault(by_name[name], []).append(sid)
    if len(classes) < 2:
        raise InputError("no foreground label to learn (label_names has only background).",
                         "Name at least one label id, e.g. {5: 'liver'}.")
    return classes, to_class, sources


def _lookup(to_class: Mapping[int, int], max_id: int) -> np.ndarray:
    lut = np.zeros(max(max_id, max(to_class, default=0)) + 1, dtype=np.uint8)
    for sid, c in to_class.items():
        lut[sid] = c
    return lut


def make_plan(
    images: Sequence[Volume],
    *,
    encoder_dir: Path | None,
    pad_multiple: Sequence[int],
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> PreprocessPlan:
    """The input recipe of a new adapter.

    Starts from the encoder's own ``preprocess_plan.json`` when it has one (its normalisation is the
    one the features were learned with); the target spacing is ``spacing``, else the encoder plan's,
    else the median spacing of ``images`` (nnU-Net's choice); the patch is ``patch_size`` rounded up
    to ``pad_multiple`` (the encoder's token patch), default 48 voxels a side.
    """
    base = PreprocessPlan()
    if encoder_dir is not None and (encoder_dir / PLAN_FILENAME).is_file():
        base = PreprocessPlan.load(encoder_dir)
    modalities = {v.modality for v in images}
    modality = modalities.pop() if len(modalities) == 1 else "any"
    if modality == "unknown":
        modality = "any"
    if spacing is not None:
        target = tuple(float(s) for s in spacing)
    elif encoder_dir is not None and (encoder_dir / PLAN_FILENAME).is_file() and base.target_spacing is not None:
        target = tuple(base.target_spacing)
    else:
        target = tuple(float(s) for s in np.median(np.array([v.spacing for v in images]), axis=0))
    pm = tuple(int(m) for m in pad_multiple)
    ps = tuple(int(p) for p in (patch_size or (48, 48, 48)))
    if len(ps) != 3 or min(ps) < 1:
        raise ConfigError(f"patch_size must be three positive sizes (D, H, W), got {patch_size}.")
    ps = tuple(int(math.ceil(p / m) * m) for p, m in zip(ps, pm))
    normalization = base.normalization
    if encoder_dir is None or not (encoder_dir / PLAN_FILENAME).is_file():
        normalization = "ct_window" if modality == "CT" else ("zscore" if modality == "MR" else "percentile")
    return replace(base, modality=modality if base.modality in ("any", modality) else base.modality,
                   target_spacing=target, normalization=normalization, patch_size=ps, pad_multiple=pm,
                   notes={**base.notes, "written_by": "radfm.adapters.fewshot"})


def _modality_id(plan: PreprocessPlan, volume: Volume | None = None) -> int | None:
    modality = volume.modality if volume is not None and volume.modality in MODALITY_IDS else plan.modality
    return MODALITY_IDS.get(modality) if modality in ("CT", "MR") else None


def prepare_case(image: Volume, label: Volume, plan: PreprocessPlan, to_class: Mapping[int, int],
                 case_id: str = "case") -> PreparedCase:
    """Image and label of one case on the model grid (``apply_plan``; labels resampled nearest)."""
    require_valid(image)
    lab = np.asarray(label.array)
    if lab.ndim == 4 and lab.shape[-1] == 1:
        lab = lab[..., 0]
    if lab.shape != image.shape:
        raise InputError(f"case {case_id}: label grid {lab.shape} does not match image grid {image.shape}.",
                         "Resample the label onto the image grid (nearest neighbour) first.")
    if lab.min() < 0:
        raise InputError(f"case {case_id}: label map has negative ids.")
    lab = _lookup(to_class, int(lab.max()))[lab.astype(np.int64)]
    prepared = apply_plan(image, plan)
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(lab)))[None, None].float()
    if tuple(t.shape[2:]) != prepared.resampled_shape:
        t = F.interpolate(t, size=prepared.resampled_shape, mode="nearest-exact")
    pad = prepared.pad
    t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]))
    return PreparedCase(case_id=case_id, image=prepared.tensor.numpy(), label=t[0, 0].to(torch.uint8).numpy(),
                        modality_id=_modality_id(plan, image))


# ----------------------------------------------------------------------------- model building
def build_model(
    encoder: RadFMEncoder,
    num_classes: int,
    strategy: str,
    *,
    lora: LoraSpec | None = None,
    label_names: Mapping[int, str] | None = None,
    adapter_name: str = "task",
    seed: int = 0,
) -> nn.Module:
    """Encoder copy + new head, set up for ``strategy`` ("linear", "lora" or "full").

    "linear" and "lora" return a PeftModel (base weights frozen; the head in ``modules_to_save``);
    "full" returns the plain model with every weight trainable. The seed fixes the new weights.
    """
    torch.manual_seed(seed)
    model = RadFMForDenseSegmentation.from_encoder(
        encoder, num_classes, id2label=dict(label_names) if label_names else None)
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if strategy == "linear":
        return attach_lora(model, adapter_name, LoraSpec(targets=()), modules_to_save=("head",))
    if strategy == "lora":
        return attach_lora(model, adapter_name, lora or LoraSpec(), modules_to_save=("head",))
    raise ConfigError(f"unknown strategy {strategy!r}.", f"Choose one of {STRATEGIES}.")


def _radfm_base(model: nn.Module) -> RadFMForDenseSegmentation | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if isinstance(base, RadFMForDenseSegmentation) else None


def _forward(model: nn.Module, x: torch.Tensor, modality_id: int | None) -> torch.Tensor:
    """Logits ``(B, K, D, H, W)`` of a radfm model (with modality ids) or of any plain segmenter."""
    if _radfm_base(model) is not None:
        mids = None if modality_id is None else torch.full((x.shape[0],), modality_id, dtype=torch.long,
                                                           device=x.device)
        return model(x, modality_ids=mids).logits
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------- training
def _augment(x: torch.Tensor, y: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Augment a batch: ``x`` ``(B, C, D, H, W)`` float, ``y`` ``(B, 1, D, H, W)`` long."""
    b = x.shape[0]
    xs, ys = [], []
    for i in range(b):
        xi, yi = x[i:i + 1], y[i:i + 1]
        dims = [2 + a for a in aug.flip_axes if float(torch.rand((), generator=g)) < aug.flip_prob]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        if aug.scale_prob > 0 and float(torch.rand((), generator=g)) < aug.scale_prob:
            lo, hi = aug.scale_range
            s = lo + (hi - lo) * float(torch.rand((), generator=g))
            theta = torch.zeros(1, 3, 4, dtype=xi.dtype)
            theta[0, 0, 0] = theta[0, 1, 1] = theta[0, 2, 2] = 1.0 / s  # zoom in when s > 1
            grid = F.affine_grid(theta, list(xi.shape), align_corners=False)
            xi = F.grid_sample(xi, grid, mode="bilinear", padding_mode="border", align_corners=False)
            yi = F.grid_sample(yi.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
        if aug.intensity_scale or aug.intensity_shift:
            scale = 1.0 + aug.intensity_scale * (2 * float(torch.rand((), generator=g)) - 1)
            shift = aug.intensity_shift * (2 * float(torch.rand((), generator=g)) - 1)
            xi = xi * scale + shift
        if aug.noise_std:
            sigma = aug.noise_std * float(torch.rand((), generator=g))
            xi = xi + sigma * torch.randn(xi.shape, generator=g, dtype=xi.dtype)
        xs.append(xi)
        ys.append(yi)
    return torch.cat(xs), torch.cat(ys)


def _batches(cases: Sequence[PreparedCase], cfg: TrainConfig) -> Iterable[tuple[torch.Tensor, torch.Tensor,
                                                                               int | None]]:
    """Endless seeded stream of ``(x (B,C,D,H,W), y (B,1,D,H,W), modality_id)`` patch batches."""
    rng = np.random.default_rng([cfg.seed, 1])
    order: list[int] = []
    pads = [[float(ch.min()) for ch in c.image] for c in cases]
    while True:
        xs, ys = [], []
        mid = None
        for _ in range(cfg.batch_size):
            if not order:
                order = list(rng.permutation(len(cases)))
            i = int(order.pop())
            case = cases[i]
            center = sample_patch_centers(case.label, cfg.patch_size, 1, fg_fraction=cfg.fg_fraction, rng=rng)[0]
            xs.append(np.stack([extract_patch(ch, center, cfg.patch_size, p) for ch, p in zip(case.image, pads[i])]))
            ys.append(extract_patch(case.label, center, cfg.patch_size, 0)[None])
            mid = case.modality_id
        yield torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys).astype(np.int64)), mid


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Head, LoRA factors and scratch weights at ``lr``; trainable pretrained encoder weights scaled."""
    base = _radfm_base(model)
    new, pretrained = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_encoder_weight = base is not None and ".encoder." in f".{name}" and "lora_" not in name
        (pretrained if is_encoder_weight else new).append(p)
    groups = [{"params": new, "lr": cfg.lr}]
    if pretrained:
        groups.append({"params": pretrained, "lr": cfg.lr * cfg.encoder_lr_scale})
    if not new and not pretrained:
        raise ConfigError("the model has no trainable parameters.")
    return groups


def fit(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "adapt",
) -> dict[str, Any]:
    """Train ``model`` (a radfm model, PeftModel or any ``(B,C,D,H,W) → (B,K,D,H,W)`` segmenter) in place.

    Returns ``{"loss_first", "loss_last" (mean of the last 10 % of steps), "seconds", "steps",
    "seconds_per_step"}``. The same seed, cases and config give bit-identical weights (CPU).
    """
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    if not cases:
        raise InputError("fit needs at least one training case.")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got {cfg.steps}.")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    warm = max(1, round(cfg.steps * cfg.warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    stream = iter(_batches(cases, cfg))
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        x, y, mid = next(stream)
        x, y = _augment(x, y, cfg.augment, g)
        x, y = x.to(device), y.to(device)
        with _autocast(device, cfg.bf16):
            logits = _forward(model, x, mid)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    tail = max(1, cfg.steps // 10)
    return {"loss_first": losses[0], "loss_last": float(np.mean(losses[-tail:])), "seconds": seconds,
            "steps": cfg.steps, "seconds_per_step": seconds / cfg.steps}


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    tensor: torch.Tensor,
    roi_size: Sequence[int],
    *,
    modality_id: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    bf16: bool = False,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``(C, D, H, W)`` model-space input → ``(K, D, H, W)`` float32 logits (Gaussian-weighted windows)."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = tensor[None].to(device)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with _autocast(device, bf16):
            return _forward(model, batch, modality_id).float()

    out = sliding_window_inference(x, roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size,
                                   predictor=predictor, overlap=overlap, mode="gaussian")
    return out[0].float().cpu()


def predict_volume(
    model: nn.Module,
    plan: PreprocessPlan,
    volume: Volume,
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    bf16: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Label map ``(X, Y, Z)`` uint8 (class indices, see ``label_names``) on ``volume``'s canonical grid.

    ``apply_plan`` → sliding-window logits over ``plan.patch_size`` windows → ``restore_to_input``
    (logits resampled back, then argmax). Write it in the file's own space with ``radfm.io.save_like``.
    """
    require_valid(volume)
    prepared = apply_plan(volume, plan)
    logits = sliding_window_logits(model, prepared.tensor, plan.patch_size, modality_id=_modality_id(plan, volume),
                                   overlap=overlap, sw_batch_size=sw_batch_size, bf16=bf16, device=device)
    return restore_to_input(logits, prepared, kind="label")


def _dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of each foreground class present in ``target`` or ``pred`` (absent from both: not scored)."""
    return {c: dice_score(pred == c, target == c) for c in range(1, num_classes)
            if (pred == c).any() or (target == c).any()}


# ----------------------------------------------------------------------------- loading
def load_adapted(directory: str | Path, *, encoder: str | Path | None = None,
                 device: str | torch.device = "cpu") -> tuple[nn.Module, PreprocessPlan, dict[int, str]]:
    """``(model, plan, label_names)`` of a directory written by :func:`adapt`, ready for :func:`predict_volume`.

    LoRA / head adapters are rebuilt on their base encoder (``encoder`` overrides the path recorded in
    ``radfm_adapter.json``; its weights must hash the same); full fine-tunes load whole.
    """
    d = Path(directory)
    record = read_adapter_meta(d)
    plan = PreprocessPlan.load(d)
    names = {int(k): str(v) for k, v in record["label_names"].items()}
    strategy = record.get("extra", {}).get("strategy", "lora")
    if strategy == "full":
        with _quiet_transformers():
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


# ----------------------------------------------------------------------------- the entry point
def adapt(
    task: str = "segmentation",
    *,
    data: str | Path | Any,
    shots: int,
    strategy: Strategy = "auto",
    encoder: str | Path | None = None,
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    patch_size: Sequence[int] | None = None,
    lr: float | None = None,
    label_names: Mapping[int, str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    spacing: Sequence[float] | None = None,
    bf16: bool = False,
    eval_cases: int = 2,
    lora: LoraSpec | None = None,
    augment: AugmentConfig | None = None,
) -> AdaptResult:
    """Fit the shared encoder to a segmentation task from ``shots`` labelled cases; write an adapter dir.

    Args:
        task: "segmentation" (the only one so far).
        data: a dataset folder / manifest (``radfm.data.load_cases``), a ``datasets.Dataset`` (e.g.
            ``phantom_dataset``) or a list of ``(image Volume, label Volume)`` pairs / PhantomCases.
        shots: K, the number of labelled cases used for training: the first K of a seeded
            permutation of the data (reported in ``AdaptResult.train_cases``); up to ``eval_cases``
            of the others are predicted afterwards for a held-out Dice in ``metrics``.
        strategy: "linear" (head only), "lora", "full" or "auto" (:func:`choose_strategy`).
        encoder: encoder directory (``RadFMEncoder.save_pretrained``); ``None``: the starter encoder.
        out_dir: where the adapter goes (created). seed: fixes everything (same seed → same weights).
        steps: optimiser steps (default :func:`default_steps`). patch_size: ``(D, H, W)`` training patch
            and inference window (default 48³, rounded up to the encoder's patch).
        lr: peak learning rate (default 1e-3; full fine-tuning trains the encoder at a tenth of it).
        label_names: ``{source label id: name}`` to learn; ids sharing a name merge into one class
            (``{2: "lungs", 3: "lungs"}``); default every label the data names, else every id found.
        device: torch device. progress: show a progress bar. spacing: target voxel size (mm, X/Y/Z).
        bf16: bfloat16 autocast in training and evaluation. lora / augment: override ``auto``'s choices.
    Returns:
        :class:`AdaptResult`.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}.", f"Supported: {', '.join(TASKS)}.")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}.", f"Choose one of {', '.join(STRATEGIES)}.")
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}.")
    enc_dir = _encoder_dir(encoder)
    refs, data_names = _collect(data)
    if shots > len(refs):
        raise InputError(f"shots={shots} but the data has only {len(refs)} labelled case(s).",
                         "Lower --shots or add cases.")
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(refs))]
    train_refs = [refs[i] for i in order[:shots]]
    eval_refs = [refs[i] for i in order[shots:shots + max(0, eval_cases)]]
    train_pairs = [r.load() for r in train_refs]

    auto_strategy, auto_lora, auto_aug = choose_strategy(shots)
    resolved = auto_strategy if strategy == "auto" else strategy
    spec = (lora or auto_lora or LoraSpec(r=16, alpha=32.0, include_pyramid=True)) if resolved == "lora" else None
    aug = augment or auto_aug

    if label_names is None:
        found = sorted({int(v) for _, lab in train_pairs for v in np.unique(lab.array) if int(v) != 0})
        label_names = {i: data_names.get(i, f"label_{i}") for i in found}
    classes, to_class, sources = _class_map(label_names)
    encoder_model = load_encoder(enc_dir)
    plan = make_plan([img for img, _ in train_pairs], encoder_dir=enc_dir,
                     pad_multiple=encoder_model.config.patch_size, patch_size=patch_size, spacing=spacing)
    cases = [prepare_case(img, lab, plan, to_class, r.case_id) for r, (img, lab) in zip(train_refs, train_pairs)]

    model = build_model(encoder_model, len(classes), resolved, lora=spec, label_names=classes, seed=seed)
    trainable = trainable_parameters(model)
    cfg = TrainConfig(steps=int(steps or default_steps(shots)), patch_size=plan.patch_size,
                      lr=float(lr or 1e-3), augment=aug, bf16=bf16, seed=seed)
    log.info("adapt: %s, K=%d, %d classes, %.2f%% trainable, %d steps", resolved, shots, len(classes) - 1,
             trainable["percent"], cfg.steps)
    metrics = fit(model, cases, cfg, device=device, progress=progress, desc=f"adapt {resolved} K={shots}")
    metrics["strategy"] = resolved

    if eval_refs:
        per_class: dict[int, list[float]] = {}
        for ref in eval_refs:
            img, lab = ref.load()
            pred = predict_volume(model, plan, img, bf16=bf16, device=device)
            target = _lookup(to_class, int(np.asarray(lab.array).max()))[np.asarray(lab.array).astype(np.int64)]
            for c, v in _dice_per_class(pred, target, len(classes)).items():
                per_class.setdefault(c, []).append(v)
        metrics["heldout_cases"] = [r.case_id for r in eval_refs]
        metrics["heldout_dice"] = {classes[c]: float(np.mean(v)) for c, v in per_class.items()}
        metrics["heldout_mean_dice"] = float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else 0.0

    out = Path(out_dir)
    extra = {"strategy": resolved, "shots": shots, "train_cases": [r.case_id for r in train_refs], "seed": seed,
             "train": {**asdict(cfg), "augment": asdict(cfg.augment)}, "metrics": metrics,
             "source_ids": {str(c): ids for c, ids in sources.items()}, "trainable": trainable}
    _save(model, resolved, out, plan=plan, classes=classes, task=task, enc_dir=enc_dir,
          encoder_model=encoder_model, extra=extra)
    return AdaptResult(out_dir=out, metrics=metrics, trainable=trainable, strategy=resolved,
                       train_cases=[r.case_id for r in train_refs])


def _save(model: nn.Module, strategy: str, out: Path, *, plan: PreprocessPlan, classes: dict[int, str], task: str,
          enc_dir: Path, encoder_model: RadFMEncoder, extra: dict[str, Any]) -> None:
    """Adapter layout for "linear"/"lora" (peft files, no encoder copy); a whole model for "full"."""
    if strategy in ("linear", "lora"):
        save_adapter(model, "task", out, task=task, plan=plan, label_names=classes,
                     base_encoder_path=enc_dir.resolve(), extra=extra)
        return
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(str(out))
    plan.save(out)
    cfg = model.config
    record = {
        "format": "radfm-adapter", "version": 1, "task": task, "name": "task",
        "num_classes": int(cfg.num_classes), "label_names": {str(k): v for k, v in classes.items()},
        "head": {k: int(getattr(cfg, k)) for k in ("num_classes", "head_channels", "fuse_channels", "skip_channels")},
        "lora": None, "modules_to_save": None,
        "base_encoder": {"path": str(enc_dir.resolve()), "sha256": encoder_sha256(encoder_model),
                         "note": "fully fine-tuned: the encoder weights are in model.safetensors here"},
        "extra": extra,
    }
    (out / ADAPTER_META_FILENAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
