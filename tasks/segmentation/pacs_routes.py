"""``POST /v1/pacs/segment``: segment a series straight from the PACS and store the DICOM SEG back.

Enabled by ``radfm serve --dicomweb-url URL`` (or ``$RADFM_DICOMWEB_URL``); without it the route
answers 400 saying so. The server pulls the series over DICOMweb (:class:`radfm.pacs.PacsClient`,
as stored, into the request's temp folder), runs the prompt segmenter as ``POST /v1/segment``
does, writes a DICOM SEG referencing the pulled series and, with ``store`` (the default), stores it
in the same study (STOW-RS). Nothing is kept on the server after the request.

Request (JSON)::

    {"study_uid": "1.2.840…", "series_index": 1 | null, "series_number": 3 | null,
     "points": [[i, j, k], …], "labels": [1, 0, …], "coords": "voxel" | "world",
     "box": [i0, j0, k0, i1, j1, k1], "structure": "liver", "store": true,
     "return_mask": "none" | "nifti" | "dicom-seg"}

``series_index`` (position in ``radfm pacs series``) or ``series_number`` picks the series; a study
with one series needs neither. Points and box are voxel indices of the series as stored (as for a
zipped series upload) or world RAS+ mm. → 200: the ``/v1/segment`` summary plus
``"pacs": {"stored": n, "failed": m}`` (``null`` when not stored: ``store`` false or an empty
mask). The study's identifiers are never echoed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from radfm.errors import InputError

__all__ = ["PacsSegmentRequest", "pacs_router"]


class PacsSegmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(min_length=1, max_length=64)
    series_index: int | None = Field(default=None, ge=1)
    series_number: int | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    coords: Literal["voxel", "world"] = "voxel"
    box: list[float] | None = None
    structure: str | None = None
    store: bool = True
    return_mask: Literal["none", "nifti", "dicom-seg"] = "none"


def pacs_router(state: Any) -> APIRouter:
    router = APIRouter(prefix="/pacs", tags=["pacs"])  # under the segmentation router's /v1

    @router.post("/segment")
    def pacs_segment(request: PacsSegmentRequest = Body(...)) -> dict[str, Any]:  # noqa: B008
        from radfm.io import load_volume
        from radfm.pacs import PacsClient
        from radfm.tasks.segmentation.dicom_seg import write_dicom_seg
        from radfm.tasks.segmentation.model_cache import get_segmenter
        from radfm.tasks.segmentation.payload import result_payload
        from radfm.tasks.segmentation.predictor import SegPredictor
        from radfm.tasks.segmentation.routes import model_dir_of

        t0 = time.perf_counter()
        url = getattr(state.settings, "dicomweb_url", None)
        if not url:
            raise InputError("this server reads no PACS.", "Start it with radfm serve --dicomweb-url URL.")
        if not request.points and request.box is None and not request.structure:
            raise InputError("empty prompt: give 'points', 'box' or 'structure'.")
        client = PacsClient(url)
        if request.series_index is None and request.series_number is None and len(client.series(request.study_uid)) > 1:
            raise InputError("the study has several series: give 'series_index' or 'series_number'.",
                             "radfm pacs series URL --study UID lists them.")
        with tempfile.TemporaryDirectory(prefix="radfm-pacs-", dir=state.settings.tmp_dir) as tmp:
            pulled = client.pull(request.study_uid, Path(tmp) / "study", index=request.series_index,
                                 series_number=request.series_number)
            volume = load_volume(pulled.series[0])
            predictor = SegPredictor(get_segmenter(model_dir_of(state)))
            predictor.set_volume(volume)
            result = predictor.predict(points=request.points, labels=request.labels, box=request.box,
                                       coords=request.coords, class_name=request.structure)
            summary = result_payload(result, volume, return_mask=request.return_mask, structure=request.structure)
            stored = None
            if request.store and not summary["empty"]:
                seg = write_dicom_seg(result.mask, volume, Path(tmp) / "seg.dcm",
                                      segment_labels=[request.structure or "segmented object"])
                pushed = client.push([seg])
                stored = {"stored": pushed.stored, "failed": pushed.failed}
        summary.update(pacs=stored, seconds=round(time.perf_counter() - t0, 3), is_research_output=True)
        return summary

    return router
