"""``POST /v1/segment``: upload a study and prompts, get the mask (JSON summary + NIfTI / DICOM SEG).

Registered as ``segmentation`` in the ``radfm.routes`` entry-point group; ``routes(state)`` returns
the router, which also carries the interactive ``/v1/sessions`` routes
(:mod:`radfm.tasks.segmentation.session_routes`). The model is the one given with ``radfm serve
--model-dir segmentation=DIR``, or the shipped one; it is loaded once per process
(:mod:`radfm.tasks.segmentation.model_cache`) and runs in the API process (no LLM backend needed).

Contract (multipart/form-data):

==================  ===========================================================================
field               meaning
==================  ===========================================================================
``file``            NIfTI (``.nii``/``.nii.gz``), one DICOM file, or a zip of one DICOM series
``points``          optional: ``"i,j,k[,+|-];…"`` voxel indices of the file as stored (``+``
                    foreground, the default; ``-`` background), as ``radfm segment --point``
``points_mm``       optional: ``"x,y,z[,+|-];…"`` world RAS+ millimetres
``box``             optional: ``"i0,j0,k0,i1,j1,k1"`` (two opposite corners, voxel indices)
``structure``       optional: a structure name the model knows ("liver") as an extra prompt
``modality``        optional: "CT" or "MR"
``return_mask``     optional: "nifti" (default), "dicom-seg" (DICOM series only) or "none"
``deidentify``      optional: "true" → the DICOM SEG through PS3.15 Annex E basic profile
==================  ===========================================================================

Response 200 (JSON): the ``radfm segment --json`` summary (``score``, ``expected_dice``,
``stability``, ``low_confidence``, ``voxels``, ``volume_ml``, ``bbox_voxel``, ``bbox_mm``,
``prompts``, ``seconds``) plus ``mask_nifti_gz_b64`` (the mask in the upload's own space, gzip NIfTI,
base64) or ``dicom_seg_b64``. Errors: bad prompts or an unusable image → 400, a non-image → 415,
too large → 413. Nothing of the image, the prompts' results or the DICOM header is logged.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from radfm.errors import InputError

log = logging.getLogger("radfm.serve.segment")

__all__ = ["check_modality", "merge_points", "model_dir_of", "parse_points", "routes"]


def parse_points(text: str | None, field: str) -> tuple[list[tuple[float, float, float]], list[int]]:
    """``"i,j,k[,+|-];…"`` → points and labels (the CLI's syntax, ``;`` between points)."""
    from radfm.tasks.segmentation.cli import parse_point

    points: list[tuple[float, float, float]] = []
    labels: list[int] = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        try:
            p, label = parse_point(part)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"'{field}': {exc}.", "Points look like 120,88,40 or 120,88,40,- separated by ';'.") from None
        points.append(p)
        labels.append(label)
    return points, labels


def _parse_box(text: str | None) -> tuple[float, ...] | None:
    from radfm.tasks.segmentation.cli import parse_box

    if text is None or not text.strip():
        return None
    try:
        return parse_box(text)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"'box': {exc}.") from None


def model_dir_of(state: Any) -> Path | None:
    """The segmentation model folder this server was started with (None: the shipped model)."""
    return state.model_dirs.get("segmentation")


def merge_points(volume: Any, pts: list[Any], labels: list[int], pts_mm: list[Any], labels_mm: list[int],
                 has_box: bool) -> tuple[list[Any] | None, list[int] | None, str]:
    """Voxel and mm clicks as one list in one coordinate system: ``(points, labels, coords)``.

    The predictor takes one system per call; mm clicks alone go in as ``"world"`` (so an outside
    point is reported in mm), mixed with voxel clicks or a (voxel) box they become native indices.
    """
    if not pts_mm:
        return (pts or None), (labels or None), "voxel"
    if not pts and not has_box:
        return pts_mm, labels_mm, "world"
    from radfm.io import check_inside
    from radfm.preprocess.geometry import PreparedGeometry

    geometry = PreparedGeometry.of(volume)
    canon = geometry.convert(pts_mm, "world", "canonical")
    try:
        check_inside(canon, volume.shape)
    except InputError as exc:
        raise InputError(f"'points_mm': a point is outside the image ({exc.problem})",
                         "points_mm are world RAS+ millimetres (DICOM viewers show LPS: negate x and y).") from None
    native = geometry.convert(canon, "canonical", "stored")
    return [*pts, *native.tolist()], [*labels, *labels_mm], "voxel"


def routes(state: Any) -> APIRouter:
    """The ``/v1/segment`` and ``/v1/sessions`` routers (see the module docstring for the contract)."""
    from radfm.tasks.segmentation.pacs_routes import pacs_router
    from radfm.tasks.segmentation.session_routes import session_router

    router = APIRouter(prefix="/v1", tags=["segmentation"])

    @router.post("/segment")
    def segment(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency style
        points: str | None = Form(None),
        points_mm: str | None = Form(None),
        box: str | None = Form(None),
        structure: str | None = Form(None),
        modality: str | None = Form(None),
        return_mask: str = Form("nifti"),
        deidentify: bool = Form(False),
    ) -> dict[str, Any]:
        from radfm.io import load_volume
        from radfm.serve.uploads import discard_upload, save_upload_to_tmp
        from radfm.tasks.segmentation.loading import default_model_dir
        from radfm.tasks.segmentation.model_cache import get_segmenter
        from radfm.tasks.segmentation.payload import check_return_kind, result_payload
        from radfm.tasks.segmentation.predictor import SegPredictor

        t0 = time.perf_counter()
        pts, labels = parse_points(points, "points")
        pts_mm, labels_mm = parse_points(points_mm, "points_mm")
        bx = _parse_box(box)
        if not pts and not pts_mm and bx is None:
            raise InputError("empty prompt: give 'points', 'points_mm' or 'box'.",
                             "e.g. points=120,88,40 (voxel indices of the uploaded file as stored).")
        check_modality(modality)
        check_return_kind(return_mask)
        model_dir = model_dir_of(state)
        path = save_upload_to_tmp(file)
        try:
            if return_mask == "dicom-seg" and not path.is_dir():  # refuse before loading the image
                raise InputError("a DICOM SEG needs a DICOM series as input.",
                                 "Upload a zipped DICOM series, or ask for return_mask=nifti.")
            volume = load_volume(path, modality=modality)
            predictor = SegPredictor(get_segmenter(model_dir))  # loaded once per process
            predictor.set_volume(volume)
            p, lab, coords = merge_points(volume, pts, labels, pts_mm, labels_mm, bx is not None)
            result = predictor.predict(points=p, labels=lab, box=bx, coords=coords, class_name=structure)
            summary = result_payload(result, volume, return_mask=return_mask, structure=structure,
                                     deidentify=deidentify)
        finally:
            discard_upload(path)
        summary["prompts"] = {"points_voxel": [list(map(float, q)) for q in pts],
                              "points_mm": [list(map(float, q)) for q in pts_mm],
                              "labels": [*labels, *labels_mm], "box_voxel": None if bx is None else list(bx),
                              "structure": structure}
        # server-side paths mean nothing to the client: the folder's name only
        summary["model"] = Path(model_dir or default_model_dir()).name
        summary.update(dtype="fp32", seconds=round(time.perf_counter() - t0, 3), is_research_output=True)
        return summary

    router.include_router(session_router(state))
    router.include_router(pacs_router(state))
    return router


def check_modality(modality: str | None) -> None:
    """400 unless ``modality`` is None, "CT" or "MR"."""
    if modality is not None and modality not in ("CT", "MR"):
        raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}.")
