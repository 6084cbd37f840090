"""A :class:`SegResult` as the JSON the HTTP routes answer: summary fields + the mask in the upload's space.

Why one helper: ``POST /v1/segment`` and ``POST /v1/sessions/{id}/segment`` must answer with the
same fields (``radfm segment --json``'s summary) and write the mask the same way — onto the
upload's own grid and affine with :func:`radfm.io.save_like`, or as a DICOM SEG referencing the
uploaded series — so a client can switch between one-shot and interactive calls freely. Nothing of
the image or the mask is logged; temporary files live only inside this call.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from radfm.errors import InputError

__all__ = ["RETURN_KINDS", "check_return_kind", "result_payload"]

RETURN_KINDS = ("nifti", "dicom-seg", "none")


def check_return_kind(return_mask: str, volume: Any | None = None) -> None:
    """400 unless ``return_mask`` is known and (for ``dicom-seg``) the image came from a DICOM series."""
    if return_mask not in RETURN_KINDS:
        raise InputError(f"return_mask must be one of {', '.join(RETURN_KINDS)}, got {return_mask!r}.")
    if return_mask == "dicom-seg" and volume is not None and volume.meta.get("format") != "dicom-series":
        raise InputError("a DICOM SEG needs a DICOM series as input.",
                         "Upload a zipped DICOM series, or ask for return_mask=nifti.")


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def result_payload(result: Any, volume: Any, *, return_mask: str = "nifti", structure: str | None = None,
                   deidentify: bool = False) -> dict[str, Any]:
    """Summary of ``result`` (a ``SegResult`` on ``volume``'s canonical grid) plus the encoded mask.

    Keys: ``empty``, ``score``, ``expected_dice``, ``stability``, ``low_confidence``, ``grid_mm`` (the
    model grid that answered), ``voxels``,
    ``volume_ml``, ``bbox_voxel``, ``bbox_mm``, and ``mask_nifti_gz_b64`` (gzip NIfTI, base64) or
    ``dicom_seg_b64`` (``None`` for an empty mask: a SEG with no segment is not valid DICOM).
    ``deidentify``: the DICOM SEG goes through PS3.15 Annex E basic profile (as ``radfm segment
    --deidentify``): no patient names, IDs, dates or private tags; UIDs replaced consistently.
    """
    from radfm.io import save_like
    from radfm.tasks.segmentation.files import mask_summary

    check_return_kind(return_mask, volume)
    mask = np.asarray(result.mask)
    n = int(np.count_nonzero(mask))
    out: dict[str, Any] = {
        "empty": n == 0, "score": _round(result.score), "expected_dice": _round(result.expected_dice),
        "stability": _round(result.stability), "low_confidence": bool(result.low_confidence),
        "grid_mm": None if getattr(result, "spacing", None) is None else float(result.spacing[0]),
        **mask_summary(mask, volume),
    }
    if return_mask == "none":
        return out
    with tempfile.TemporaryDirectory(prefix="radfm-seg-out-") as tmp:
        if return_mask == "nifti":
            written = save_like(mask, volume, Path(tmp) / "mask.nii.gz", dtype=np.uint8)
            out["mask_nifti_gz_b64"] = base64.b64encode(Path(written).read_bytes()).decode("ascii")
        elif n == 0:
            out["dicom_seg_b64"] = None
        else:
            from radfm.tasks.segmentation.dicom_seg import write_dicom_seg

            seg = write_dicom_seg(mask, volume, Path(tmp) / "mask_seg.dcm",
                                  segment_labels=[structure or "segmented object"], deidentify=deidentify)
            out["dicom_seg_b64"] = base64.b64encode(Path(seg).read_bytes()).decode("ascii")
    return out
