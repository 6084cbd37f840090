"""Training and evaluation cases on the model grid: an image, its label map and the promptable targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radfm.data.patches import canonical_to_model
from radfm.errors import InputError
from radfm.io.volume import Volume
from radfm.models.encoder_config import MODALITY_IDS
from radfm.preprocess.plan import PreprocessPlan, apply_plan

__all__ = ["EXCLUDED_TARGETS", "TrainCase", "folder_cases", "phantom_cases", "prepare_case"]

#: Phantom labels that are not a sensible click target (the whole body, the background).
EXCLUDED_TARGETS = ("background", "body")


@dataclass
class TrainCase:
    """One case resampled to the model's grid.

    Attributes:
        image: ``(C, D, H, W)`` float32 normalised (the plan's output, padded to the patch multiple).
        labels: ``(D, H, W)`` int16 label map on the same grid (nearest-neighbour resampled).
        targets: label ids that may be prompted, with their names.
        modality_id: ``MODALITY_IDS`` value.
        spacing: voxel size (mm) of the grid along (D, H, W).
    """

    image: torch.Tensor
    labels: np.ndarray
    targets: dict[int, str]
    modality_id: int
    spacing: tuple[float, float, float]
    case_id: str = ""


def prepare_case(image: Volume, labels: Volume | np.ndarray, label_names: dict[int, str] | None,
                 plan: PreprocessPlan, *, case_id: str = "", min_voxels: int = 20) -> TrainCase:
    """Resample an image (``apply_plan``) and its label map (nearest, same grid) to the model grid."""
    prepared = apply_plan(image, plan)
    lab = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    lab = np.asarray(lab)
    if lab.shape[:3] != image.shape:
        raise InputError(f"case {case_id}: label grid {lab.shape} does not match image grid {image.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(lab.astype(np.int16)))).float()[None, None]
    t = F.interpolate(t, size=prepared.resampled_shape, mode="nearest-exact")[0, 0]
    pad = prepared.pad
    t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]))
    lab_m = t.numpy().astype(np.int16)
    counts = np.bincount(lab_m.ravel().clip(0), minlength=1)
    names = label_names or {int(v): f"label {int(v)}" for v in np.unique(lab_m) if v > 0}
    targets = {int(k): str(v) for k, v in names.items()
               if int(k) > 0 and str(v).lower() not in EXCLUDED_TARGETS and int(k) < len(counts)
               and counts[int(k)] >= min_voxels}
    return TrainCase(image=prepared.tensor, labels=lab_m, targets=targets,
                     modality_id=MODALITY_IDS.get(image.modality, MODALITY_IDS["other"]),
                     spacing=tuple(float(s) for s in prepared.spacing_dhw), case_id=case_id)  # type: ignore[arg-type]


def phantom_cases(n: int, plan: PreprocessPlan, *, seed: int = 0, size_scale: float = 1.0,
                  progress: bool = False) -> list[TrainCase]:
    """``n`` SIMULATED cases (CT and MR, torso and head, 0–3 lesions, varied slice thickness).

    ``size_scale`` shrinks the field of view's voxel count (tests use ~0.5 for speed); anatomy
    always fills the field of view (see ``radfm.data.phantom``).
    """
    from tqdm.auto import tqdm

    from radfm.data.phantom import make_phantom

    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(n), desc="phantoms", disable=not progress):
        head = rng.random() < 0.3
        modality = "MR" if rng.random() < 0.4 else "CT"
        fov = rng.uniform(180, 230) if head else rng.uniform(280, 380)
        sz = rng.uniform(3.0, 6.0) if rng.random() < 0.4 else rng.uniform(2.0, 3.5)
        sxy = rng.uniform(2.0, 3.5)
        shape = tuple(max(16, round(fov / s * size_scale)) for s in (sxy, sxy, sz))
        spacing = (sxy / size_scale, sxy / size_scale, sz / size_scale)
        case = make_phantom(int(rng.integers(2**31)), modality=modality, shape=shape, spacing=spacing,
                            body="head" if head else "chest_abdomen", n_lesions=int(rng.integers(0, 4)))
        out.append(prepare_case(case.image, case.labels, case.label_names, plan, case_id=f"phantom{i}"))
    return out


def folder_cases(path: str | Path, plan: PreprocessPlan, *, limit: int | None = None) -> list[TrainCase]:
    """Cases of any labelled folder/manifest ``radfm.data.load_cases`` understands (every label a target)."""
    from radfm.data.datasets import load_case, load_cases

    ds = load_cases(path)
    desc = json.loads(ds.info.description or "{}")
    names = desc.get("labels") or {}
    names = {int(v): str(k) for k, v in names.items()} if names and all(
        str(v).isdigit() for v in names.values()) else {int(k): str(v) for k, v in names.items() if str(k).isdigit()}
    out = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        if not row.get("label"):
            continue
        case = load_case(row)
        out.append(prepare_case(case["image"], case["label"], names or None, plan, case_id=str(case["case_id"])))
    return out
