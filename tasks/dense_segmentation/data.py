"""Labelled cases for few-shot dense segmentation: collect them, map label ids to classes, plan, prepare.

The data path of one case: ``collect_cases`` (a dataset folder / manifest, a ``datasets.Dataset``
or in-memory Volumes, loaded lazily) → ``class_map`` (source label ids → class indices; ids that
share a name merge) → ``make_plan`` (the adapter's input recipe, from the encoder's own plan) →
``prepare_case`` (``apply_plan``: image and label on the model grid).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radfm.check import require_valid
from radfm.data.patches import canonical_to_model
from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.models.encoder_config import MODALITY_IDS
from radfm.preprocess.plan import PLAN_FILENAME, PreprocessPlan, apply_plan

__all__ = ["PreparedCase", "class_map", "collect_cases", "label_lookup", "make_plan", "modality_id_of",
           "prepare_case"]


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
class _CaseRef:
    """A case id and how to load its ``(image, label)`` Volumes (only when needed)."""

    case_id: str
    load: Callable[[], tuple[Volume, Volume]]


def _phantom_row_case(row: Mapping[str, Any]) -> tuple[Volume, Volume]:
    affine = np.asarray(row["affine"], dtype=np.float64)
    modality = row.get("modality") or "unknown"
    image = Volume(np.asarray(row["image"], dtype=np.float32), affine, modality=modality,
                   meta={"simulated": True})
    label = Volume(np.asarray(row["labels"]).astype(np.uint8), affine, modality=modality)
    return image, label


def collect_cases(data: Any) -> tuple[list[_CaseRef], dict[int, str]]:
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


def class_map(label_names: Mapping[int, str]) -> tuple[dict[int, str], dict[int, int], dict[int, list[int]]]:
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


def label_lookup(to_class: Mapping[int, int], max_id: int) -> np.ndarray:
    """A lookup table ``source id → class index`` (uint8) covering ids ``0 … max_id``; unlisted ids → 0."""
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
                   notes={**base.notes, "written_by": "radfm.tasks.dense_segmentation"})


def modality_id_of(plan: PreprocessPlan, volume: Volume | None = None) -> int | None:
    """The encoder's modality id (CT / MR) of ``volume``, else of the plan; ``None`` for other modalities."""
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
    lab = label_lookup(to_class, int(lab.max()))[lab.astype(np.int64)]
    prepared = apply_plan(image, plan)
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(lab)))[None, None].float()
    if tuple(t.shape[2:]) != prepared.resampled_shape:
        t = F.interpolate(t, size=prepared.resampled_shape, mode="nearest-exact")
    pad = prepared.pad
    t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]))
    return PreparedCase(case_id=case_id, image=prepared.tensor.numpy(), label=t[0, 0].to(torch.uint8).numpy(),
                        modality_id=modality_id_of(plan, image))
