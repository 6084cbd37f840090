"""``/v1/adapters``: automatic segmentation by few-shot task adapters, all on one shared encoder.

Registered as ``dense_segmentation`` in the ``radfm.routes`` entry-point group. The adapters are
the ``radfm serve --task-adapter NAME=DIR`` folders (written by ``radfm adapt``), loaded once when
the server starts into an :class:`~radfm.tasks.dense_segmentation.pool.AdapterPool`: adapters over
the same base encoder share one copy of it and are switched per request.

- ``GET /v1/adapters``: ``{"adapters": [{"name", "strategy", "classes", "encoder_sha256",
  "encoder_shared_by"}], "encoder_copies": n}``.
- ``POST /v1/adapters/{name}/segment`` (multipart): ``file`` (NIfTI, one DICOM file or a zipped
  series), optional ``structure`` (one class; default all foreground), ``modality`` ("CT"/"MR"),
  ``return_mask`` ("nifti", the default, or "none"). Answers ``{"adapter", "label", "voxels",
  "volume_ml", "mask_nifti_gz_b64", "seconds", "is_research_output"}``; the mask is in the
  upload's own space. Unknown adapter → 404; bad image or structure → 400.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from radfm.errors import InputError

__all__ = ["routes"]

_RETURN = ("nifti", "none")


def routes(state: Any) -> APIRouter:
    """The ``/v1/adapters`` router over the adapters in ``state.settings.task_adapters``."""
    from radfm.tasks.dense_segmentation.pool import AdapterPool

    pool = AdapterPool(dict(state.settings.task_adapters))  # loaded once per process, at start-up
    state.extras["adapter_pool"] = pool
    router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

    @router.get("")
    def list_adapters() -> dict[str, Any]:
        return {"adapters": pool.describe(), "encoder_copies": pool.encoder_copies()}

    @router.post("/{name}/segment")
    def segment(
        name: str,
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency style
        structure: str | None = Form(None),
        modality: str | None = Form(None),
        return_mask: str = Form("nifti"),
    ) -> dict[str, Any]:
        from radfm.io import load_volume, save_like
        from radfm.serve.uploads import discard_upload, save_upload_to_tmp
        from radfm.tasks.dense_segmentation.inference import select_structure

        t0 = time.perf_counter()
        entry = pool.get(name)  # 404 before reading the upload
        if modality is not None and modality not in ("CT", "MR"):
            raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}.")
        if return_mask not in _RETURN:
            raise InputError(f"return_mask must be one of {', '.join(_RETURN)}, got {return_mask!r}.")
        path = save_upload_to_tmp(file)
        try:
            volume = load_volume(path, modality=modality)
            labels = pool.predict(name, volume)
            mask, label = select_structure(labels, entry.label_names, structure, where=f"adapter {name!r}")
            n = int(np.count_nonzero(mask))
            out: dict[str, Any] = {"adapter": name, "label": label, "voxels": n,
                                   "volume_ml": round(n * float(np.prod(volume.spacing)) / 1000.0, 3)}
            if return_mask == "nifti":
                with tempfile.TemporaryDirectory(prefix="radfm-adapter-out-") as tmp:
                    written = save_like(mask, volume, Path(tmp) / "mask.nii.gz", dtype=np.uint8)
                    out["mask_nifti_gz_b64"] = base64.b64encode(Path(written).read_bytes()).decode("ascii")
        finally:
            discard_upload(path)
        out.update(seconds=round(time.perf_counter() - t0, 3), is_research_output=True)
        return out

    return router
