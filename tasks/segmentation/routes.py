"""``POST /v1/segment``: upload a study and prompts, get the mask (JSON summary + NIfTI / DICOM SEG).

Registered as ``segmentation`` in the ``radfm.routes`` entry-point group; ``routes(state)`` returns
the router. The model is the one given with ``radfm serve --model-dir segmentation=DIR``, or the
shipped one. It runs in the API process (no LLM backend needed).

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
==================  ===========================================================================

Response 200 (JSON): the ``radfm segment --json`` summary (``score``, ``expected_dice``,
``stability``, ``low_confidence``, ``voxels``, ``volume_ml``, ``bbox_voxel``, ``bbox_mm``,
``prompts``, ``seconds``) plus ``mask_nifti_gz_b64`` (the mask in the upload's own space, gzip NIfTI,
base64) or ``dicom_seg_b64``. Errors: bad prompts or an unusable image → 400, a non-image → 415,
too large → 413. Nothing of the image, the prompts' results or the DICOM header is logged.
"""

from __future__ import annotations

import argparse
import base64
import logging
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from radfm.errors import InputError

log = logging.getLogger("radfm.serve.segment")

__all__ = ["parse_points", "routes"]

RETURN_KINDS = ("nifti", "dicom-seg", "none")


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


def routes(state: Any) -> APIRouter:
    """The ``/v1/segment`` router for the radfm service (see the module docstring for the contract)."""
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
    ) -> dict[str, Any]:
        from radfm.serve.uploads import discard_upload, save_upload_to_tmp
        from radfm.tasks.segmentation.predictor import segment_file

        pts, labels = parse_points(points, "points")
        pts_mm, labels_mm = parse_points(points_mm, "points_mm")
        bx = _parse_box(box)
        if not pts and not pts_mm and bx is None:
            raise InputError("empty prompt: give 'points', 'points_mm' or 'box'.",
                             "e.g. points=120,88,40 (voxel indices of the uploaded file as stored).")
        if modality is not None and modality not in ("CT", "MR"):
            raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}.")
        if return_mask not in RETURN_KINDS:
            raise InputError(f"return_mask must be one of {', '.join(RETURN_KINDS)}, got {return_mask!r}.")
        model_dir = state.model_dirs.get("segmentation")
        path = save_upload_to_tmp(file)
        try:
            if return_mask == "dicom-seg" and not path.is_dir():
                raise InputError("a DICOM SEG needs a DICOM series as input.",
                                 "Upload a zipped DICOM series, or ask for return_mask=nifti.")
            with tempfile.TemporaryDirectory(prefix="radfm-seg-out-") as tmp:
                out = Path(tmp) / "mask.nii.gz"
                seg = Path(tmp) / "mask_seg.dcm" if return_mask == "dicom-seg" else None
                summary = segment_file(path, out=out, points=pts, labels=labels, points_mm=pts_mm,
                                       labels_mm=labels_mm, box=bx, model_dir=model_dir, dicom_seg=seg,
                                       modality=modality, structure=structure)
                if return_mask == "nifti":
                    summary["mask_nifti_gz_b64"] = base64.b64encode(out.read_bytes()).decode("ascii")
                elif seg is not None:
                    summary["dicom_seg_b64"] = base64.b64encode(seg.read_bytes()).decode("ascii")
        finally:
            discard_upload(path)
        # server-side temporary paths mean nothing to the client
        summary.pop("mask", None)
        summary.pop("dicom_seg", None)
        summary["model"] = Path(str(summary.get("model"))).name
        summary["is_research_output"] = True
        return summary

    return router
