"""``/v1/sessions``: interactive prompt segmentation over HTTP — upload once, click many times.

Why: ``POST /v1/segment`` uploads, preprocesses and embeds the image for every prompt; an
interactive client (click, look, click again) pays that each time. A session keeps the volume's
embedding (:class:`SegPredictor` after ``set_volume``) in the server, so clicks 2, 3, … only run
the prompt encoder and mask decoder, and the previous mask is the next click's mask prompt.

Contract:

``POST /v1/sessions`` (multipart/form-data): ``file`` (NIfTI, one DICOM file, or a zip of one DICOM
series; the same upload checks as ``/v1/segment``), optional ``modality`` ("CT" / "MR"). The image
is checked and embedded (a volume larger than the model's window is embedded per window at the
first click that needs it). → 200 ``{"session_id", "expires_in_s", "shape_voxel", "format",
"dicom_seg_available", "session_bytes", "model", "is_research_output"}``. 413 when the image alone
needs more than the server's session memory cap.

``POST /v1/sessions/{id}/segment`` (JSON)::

    {"points": [[i, j, k], ...], "labels": [1, 0, ...], "coords": "voxel" | "world",
     "box": [i0, j0, k0, i1, j1, k1], "use_previous_mask": true, "structure": "liver",
     "return_mask": "nifti" | "dicom-seg" | "none", "deidentify": false}

``points`` / ``box``: native voxel indices of the uploaded file as stored (``coords="voxel"``, the
default) or world RAS+ mm (``coords="world"``); ``labels`` 1 = foreground (default) / 0 =
background; ``use_previous_mask`` (default true): the session's previous result is the mask
prompt. → 200 with the ``/v1/segment`` summary (``score``, ``expected_dice``, ``stability``,
``low_confidence``, ``voxels``, ``volume_ml``, ``bbox_voxel``, ``bbox_mm``, ``empty``) and
``mask_nifti_gz_b64`` (the mask on the upload's own grid and affine) or ``dicom_seg_b64`` (DICOM
series only), plus ``session_id``, ``click``, ``used_previous_mask``, ``session_bytes``, ``expires_in_s``,
``seconds``.
Bad prompts → 400 with the reason.

``GET /v1/sessions/{id}/image`` → the session's image as gzip NIfTI in the upload's geometry (for a
viewer: ``/viewer`` displays it and sends clicks in world mm).

``DELETE /v1/sessions/{id}`` → 200 ``{"session_id", "deleted": true}``.

An unknown, expired, evicted or deleted id → 404. Sessions expire after ``session_ttl_s`` idle and
are evicted least recently used first past ``session_max_bytes`` (:class:`ServeSettings`,
``radfm serve --session-ttl-s / --session-max-mb``). For a DICOM series the uploaded files stay on
the server's temp disk while the session lives (a DICOM SEG must reference them) and are deleted
with it. Nothing of the image, prompts or masks is logged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Body, File, Form, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radfm.errors import InputError
from radfm.tasks.segmentation.sessions import Session, SessionStore

log = logging.getLogger("radfm.serve.sessions")

__all__ = ["STORE_KEY", "SessionPrompt", "session_router"]

STORE_KEY = "segmentation.sessions"  # where the store lives in ServeState.extras


class SessionPrompt(BaseModel):
    """The JSON body of ``POST /v1/sessions/{id}/segment`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    points: list[list[float]] = Field(default_factory=list)
    labels: list[int] | None = None
    coords: Literal["voxel", "world"] = "voxel"
    box: list[float] | None = None
    use_previous_mask: bool = True
    structure: str | None = None
    return_mask: Literal["nifti", "dicom-seg", "none"] = "nifti"
    deidentify: bool = False


def parse_prompt(body: Any) -> SessionPrompt:
    """Validate the body; a malformed prompt is a 400 naming the field (not FastAPI's generic 422)."""
    try:
        return SessionPrompt.model_validate(body)
    except ValidationError as exc:
        reasons = "; ".join(f"'{'.'.join(map(str, e['loc'])) or 'body'}': {e['msg']}" for e in exc.errors()[:3])
        raise InputError(f"bad prompt: {reasons}.",
                         'e.g. {"points": [[120, 88, 40]], "labels": [1]} (voxel indices of the uploaded file).') from None


def _load_session_volume(state: Any, file: Any, modality: str | None) -> tuple[Any, Path | None]:
    """The uploaded volume, and the session-owned folder of its DICOM series (None for other files).

    Why move the series: the request's upload folder is deleted after the response, but a DICOM SEG
    answered on a later click must re-read the source instances.
    """
    from radfm.io import load_volume
    from radfm.serve.uploads import save_upload_to_tmp

    path = save_upload_to_tmp(file)  # deleted with the request (by the app's upload scope)
    if not path.is_dir():
        return load_volume(path, modality=modality), None
    keep = Path(tempfile.mkdtemp(prefix="radfm-session-", dir=state.settings.tmp_dir))
    try:
        series = Path(shutil.move(str(path), str(keep / "series")))
        return load_volume(series, modality=modality), keep
    except BaseException:
        shutil.rmtree(keep, ignore_errors=True)
        raise


def session_router(state: Any) -> APIRouter:
    """The ``/sessions`` routes (mounted under ``/v1`` by :func:`routes.routes`); one store per app."""
    store = SessionStore(ttl_s=state.settings.session_ttl_s, max_bytes=state.settings.session_max_bytes)
    state.extras[STORE_KEY] = store
    router = APIRouter(prefix="/sessions", tags=["segmentation"], on_shutdown=[store.close])

    @router.post("")
    def create_session(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency style
        modality: str | None = Form(None),
    ) -> dict[str, Any]:
        from radfm.tasks.segmentation.loading import default_model_dir
        from radfm.tasks.segmentation.model_cache import get_segmenter
        from radfm.tasks.segmentation.predictor import SegPredictor
        from radfm.tasks.segmentation.routes import check_modality, model_dir_of

        check_modality(modality)
        model_dir = model_dir_of(state)
        volume, keep = _load_session_volume(state, file, modality)
        try:
            predictor = SegPredictor(get_segmenter(model_dir))
            predictor.set_volume(volume)  # checks the image, embeds it when it fits one window
        except BaseException:
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
            raise
        session = store.add(predictor, volume, source_dir=keep)
        native = volume.native.shape[:3] if volume.native is not None else volume.shape
        return {"session_id": session.id, "expires_in_s": round(store.expires_in_s(session), 1),
                "shape_voxel": [int(n) for n in native], "format": volume.meta.get("format"),
                "dicom_seg_available": keep is not None, "session_bytes": session.nbytes,
                "model": Path(model_dir or default_model_dir()).name, "is_research_output": True}

    @router.post("/{session_id}/segment")
    def segment_in_session(session_id: str, body: Any = Body(...)) -> dict[str, Any]:  # noqa: B008
        from radfm.tasks.segmentation.payload import check_return_kind, result_payload

        t0 = time.perf_counter()
        session: Session = store.get(session_id)
        prompt = parse_prompt(body)
        check_return_kind(prompt.return_mask, session.volume)
        with session.use():
            previous = session.previous if prompt.use_previous_mask else None
            result = session.predictor.predict(points=prompt.points or None, labels=prompt.labels, box=prompt.box,
                                               mask_input=previous, coords=prompt.coords,
                                               class_name=prompt.structure)
            out = result_payload(result, session.volume, return_mask=prompt.return_mask, structure=prompt.structure,
                                 deidentify=prompt.deidentify)
            session.previous = result
            session.clicks += 1
            click = session.clicks
        store.touch(session)
        out.update(session_id=session.id, click=click, used_previous_mask=previous is not None,
                   session_bytes=session.nbytes,
                   expires_in_s=round(store.expires_in_s(session), 1),
                   seconds=round(time.perf_counter() - t0, 4), is_research_output=True)
        return out

    @router.get("/{session_id}/image")
    def session_image(session_id: str) -> Response:
        """The session's image as gzip NIfTI in the upload's own geometry (what a viewer displays).

        Why: a browser cannot read a zipped DICOM series; this NIfTI carries the same world RAS+
        mm as the upload, so clicks taken on it (``coords: "world"``) land where the user clicked.
        No header data is in it (a NIfTI holds pixels and geometry only).
        """
        from radfm.io import save_like

        session: Session = store.get(session_id)
        with session.use(), tempfile.TemporaryDirectory(prefix="radfm-session-image-") as tmp:
            written = save_like(session.volume.array, session.volume, Path(tmp) / "image.nii.gz")
            data = Path(written).read_bytes()
        store.touch(session)
        return Response(content=data, media_type="application/gzip",
                        headers={"Content-Disposition": 'attachment; filename="image.nii.gz"'})

    @router.delete("/{session_id}")
    def delete_session(session_id: str) -> dict[str, Any]:
        store.delete(session_id)
        return {"session_id": session_id, "deleted": True}

    return router
