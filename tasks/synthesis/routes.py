"""``POST /v1/synthesize``: upload a study, get the synthesised image in the upload's own space.

Registered as ``synthesis`` in the ``radfm.routes`` entry-point group. The model is the one given
with ``radfm serve --model-dir synthesis=DIR``, or the shipped one; it is loaded once per process
(``radfm.tasks.synthesis.api.load_model`` caches it).

Contract (multipart/form-data): ``file`` (NIfTI, one DICOM file or a zipped series), ``task``
(``lowdose``), optional ``modality`` ("CT"/"MR"). Answer 200: ``{"task", "timings_s", "quality":
{"flag", "reasons", …}, "image_nifti_gz_b64", "seconds", "is_research_output"}`` — the image as
gzip NIfTI (float32 HU) on the upload's grid and affine. A wrong modality for the task (an MR given
to ``lowdose``), NaN voxels or an unusable image → 400. Nothing of the image is logged.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from radfm.errors import InputError

__all__ = ["routes"]


def routes(state: Any) -> APIRouter:
    """The ``/v1/synthesize`` router (see the module docstring for the contract)."""
    from radfm.tasks.synthesis.config import TASKS

    router = APIRouter(prefix="/v1", tags=["synthesis"])

    @router.post("/synthesize")
    def synthesize_route(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency style
        task: str = Form("lowdose"),
        modality: str | None = Form(None),
    ) -> dict[str, Any]:
        from radfm.io import load_volume, save_like
        from radfm.serve.uploads import discard_upload, save_upload_to_tmp
        from radfm.tasks.synthesis.api import synthesize

        t0 = time.perf_counter()
        if task not in TASKS:
            raise InputError(f"unknown synthesis task {task!r}.", f"Known tasks: {', '.join(TASKS)}.")
        if modality is not None and modality not in ("CT", "MR"):
            raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}.")
        path = save_upload_to_tmp(file)
        try:
            volume = load_volume(path, modality=modality)
            result = synthesize(volume, task=task, model=state.model_dirs.get("synthesis"))
            with tempfile.TemporaryDirectory(prefix="radfm-synth-out-") as tmp:
                written = save_like(result.array, volume, Path(tmp) / "synth.nii.gz", dtype="float32")
                image_b64 = base64.b64encode(Path(written).read_bytes()).decode("ascii")
        finally:
            discard_upload(path)
        return {**result.stats, "image_nifti_gz_b64": image_b64, "seconds": round(time.perf_counter() - t0, 3),
                "is_research_output": True}

    return router
