"""One call from a file: ``segment_file`` (what ``radfm segment`` runs) and the mask summary it prints.

Why apart from the predictor: the predictor is the in-memory API (a volume, many prompts); this is the
file façade (read, check, choose the model or a ``radfm adapt`` folder, write in the input's space).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radfm.check import require_valid
from radfm.errors import InputError
from radfm.io.volume import Volume
from radfm.tasks.segmentation.loading import default_model_dir, load_segmenter
from radfm.tasks.segmentation.predictor import SegPredictor
from radfm.tasks.segmentation.results import SegResult

__all__ = ["mask_summary", "segment_file"]


def mask_summary(mask: np.ndarray, volume: Volume) -> dict[str, Any]:
    """Volume (ml) and bounding box of a canonical mask, in native voxel indices and world RAS+ mm."""
    from radfm.preprocess.geometry import PreparedGeometry

    n = int(np.count_nonzero(mask))
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    out: dict[str, Any] = {"voxels": n, "volume_ml": round(n * voxel_ml, 4)}
    if n == 0:
        out.update({"bbox_voxel": None, "bbox_mm": None})
        return out
    idx = np.argwhere(mask)
    geometry = PreparedGeometry.of(volume)
    native = geometry.convert_box(idx.min(0), idx.max(0), "canonical", "stored")
    world = geometry.convert_box(idx.min(0), idx.max(0), "canonical", "world")
    out["bbox_voxel"] = {"min": np.rint(native[0]).astype(int).tolist(), "max": np.rint(native[1]).astype(int).tolist(),
                         "space": "native voxel indices (i, j, k) of the file as stored"}
    out["bbox_mm"] = {"min": np.round(world[0], 2).tolist(), "max": np.round(world[1], 2).tolist(),
                      "space": "world RAS+ mm of voxel centres"}
    return out


def _dense_adapter(adapter: str | Path | None) -> bool:
    """Whether ``adapter`` is a few-shot dense-segmentation folder written by ``radfm adapt``."""
    if adapter is None:
        return False
    from radfm.adapters.lora import read_adapter_meta

    record = read_adapter_meta(adapter)
    return record.get("task") != "prompt-segmentation" and "label_names" in record


def _segment_dense(volume: Volume, adapter: str | Path, structure: str | None, dtype: str) -> tuple[np.ndarray, str]:
    """Automatic segmentation with a ``radfm adapt`` folder: the mask of ``structure`` (or all foreground).

    Found by name in the ``radfm.segmenters`` entry points (``dense_segmentation``): that task is
    another package, which this one may not import (tasks never import each other).
    """
    from radfm.registry import load

    segment_volume = load("radfm.segmenters", "dense_segmentation")
    return segment_volume(volume, adapter, structure, dtype)


def segment_file(image: str | Path, *, out: str | Path, points: Sequence[Sequence[float]] = (),
                 labels: Sequence[int] = (), points_mm: Sequence[Sequence[float]] = (), labels_mm: Sequence[int] = (),
                 box: Sequence[float] | None = None, model_dir: str | Path | None = None,
                 adapter: str | Path | None = None, dicom_seg: str | Path | None = None,
                 modality: str | None = None, series: int | None = None, structure: str | None = None,
                 dtype: Literal["fp32", "bf16"] = "fp32", deidentify: bool = False) -> dict[str, Any]:
    """Segment one object in an image file from clicks/box/a structure name; write the mask in the input's space.

    ``points`` / ``box`` are native voxel indices of the file as stored; ``points_mm`` world RAS+ mm.
    ``adapter`` may be a prompt-segmentation LoRA adapter or a ``radfm adapt`` folder (automatic
    segmentation of its structures; ``structure`` picks one). ``deidentify``: the DICOM SEG follows
    PS3.15 Annex E basic profile (no patient data in it). Returns the summary that
    ``radfm segment --json`` prints (no patient data); ``summary["empty"]`` says whether the mask is empty.
    """
    import time

    from radfm.io import load_volume, save_like

    t0 = time.perf_counter()
    volume = load_volume(image, modality=modality, series=series)
    if series is not None:
        volume.meta["series_index"] = series
    if dicom_seg is not None and volume.meta.get("format") != "dicom-series":
        raise InputError("--dicom-seg needs a DICOM series as input (a DICOM SEG must reference its source images).",
                         "Give the DICOM folder, or leave --dicom-seg out and use the NIfTI mask.")
    if _dense_adapter(adapter):
        if points or points_mm or box is not None:
            raise InputError(f"{adapter} is a few-shot automatic-segmentation adapter (radfm adapt); it takes no "
                             "clicks or box.", "Give --structure NAME or nothing (all its structures).")
        require_valid(volume)
        mask, _label = _segment_dense(volume, adapter, structure, dtype)  # type: ignore[arg-type]
        result = SegResult(mask=mask, score=float("nan"), candidate_scores=np.array([np.nan]), best_index=0,
                           low_res_logits=None)
        model_name = str(adapter)
    else:
        model = load_segmenter(model_dir, adapter=adapter)
        predictor = SegPredictor(model, dtype=dtype)
        predictor.set_volume(volume)
        geometry = predictor.geometry
        canon = [geometry.checked_points(p, c) for p, c in ((points, "voxel"), (points_mm, "world")) if len(p)]
        native_pts = geometry.convert(np.concatenate(canon), "canonical", "stored") if canon else None
        result = predictor.predict(points=native_pts, labels=[*labels, *labels_mm] or None, box=box, coords="voxel",
                                   class_name=structure)
        model_name = str(model_dir or default_model_dir())
    all_labels = [*labels, *labels_mm]
    written = save_like(result.mask, volume, out, dtype=np.uint8)
    n = int(np.count_nonzero(result.mask))
    summary: dict[str, Any] = {
        "mask": str(written), "empty": n == 0,
        "score": None if not np.isfinite(result.score) else round(result.score, 4),
        "expected_dice": None if result.expected_dice is None else round(result.expected_dice, 4),
        "stability": None if result.stability is None else round(result.stability, 4),
        "low_confidence": result.low_confidence,
        "grid_mm": None if result.spacing is None else float(result.spacing[0]), **mask_summary(result.mask, volume),
        "prompts": {"points_voxel": [list(map(float, p)) for p in points], "points_mm": [list(map(float, p)) for p in points_mm],
                    "labels": [int(v) for v in all_labels], "box_voxel": None if box is None else [float(v) for v in box],
                    "structure": structure},
        "model": model_name, "dtype": dtype, "seconds": round(time.perf_counter() - t0, 3),
    }
    if dicom_seg is not None and n:
        from radfm.tasks.segmentation.dicom_seg import write_dicom_seg

        summary["dicom_seg"] = str(write_dicom_seg(result.mask, volume, dicom_seg,
                                                   segment_labels=[structure or "segmented object"],
                                                   deidentify=deidentify))
    return summary
