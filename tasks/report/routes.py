"""``POST /v1/report``: upload an image (and/or findings), get a DRAFT report as JSON.

Registered as ``report`` in the ``radfm.routes`` entry-point group; ``routes(state)`` returns the
router. The volume side (input check, preprocessing plan, encoder + bridge, prompt embeddings)
runs in the API process; the LLM runs behind ``state.backend`` (vLLM with prompt embeddings, or
transformers), which must serve this model's language model: ``<model dir>/llm`` for an
image→report model, the folder itself for a text drafter.

Contract (multipart/form-data):

==================  ===========================================================================
field               meaning
==================  ===========================================================================
``file``            optional: NIfTI (``.nii``/``.nii.gz``), one DICOM file, or a zip of one DICOM
                    series (type read from the bytes)
``findings``        optional: ``"Cardiomegaly; Opacity/lung/base/left"`` or a JSON list of
                    findings (strings or ``Finding`` dicts with organ/size_mm/location/label_id/
                    bbox_ijk); at least one of ``file`` / ``findings``
``modality``        optional: "CT" or "MR" (overrides headers / detection)
``max_new_tokens``  optional: 1..512 (default 200)
``return_sr``       optional: "true" adds ``dicom_sr_b64``, the draft as a DICOM SR (partial,
                    unverified) referencing the uploaded series (zipped DICOM series only)
``deidentify``      optional: "true" applies PS3.15 Annex E (basic profile) to that SR: no
                    patient names, IDs, dates or private tags; UIDs replaced consistently
==================  ===========================================================================

Response 200 (JSON)::

    {"is_draft": true, "marker": "DRAFT — for review by a radiologist", "disclaimer": "...",
     "source": "image" | "findings" | "image+findings",
     "findings": "...", "impression": "...",
     "sentences": [{"text", "section", "finding_index", "finding", "label_id", "bbox_ijk", "link"}],
     "input_check": {"ok": true, "findings": [{"level", "code", "message", "hint"}]} | null,
     "model": {"kind", "name", "backend", "adapter"}, "timing_s": {"prepare", "generate", "total"}}

Errors: an unusable image or bad fields → 400 ``{"detail", "hint", "type"}`` (the app's handler),
a non-image upload → 415, too large → 413, no model/backend configured → 503. Nothing of the
image or the report is logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from radfm.errors import InputError

log = logging.getLogger("radfm.serve.report")

__all__ = ["MARKER", "routes"]

from radfm.tasks.report.dicom_sr import MARKER  # noqa: E402  (one marker for JSON and SR)

MAX_NEW_TOKENS = 512
_LOCK = threading.Lock()


def _model(state: Any) -> Any:
    """The report model of ``state.model_dirs['report']``, loaded once and cached in ``state.extras``."""
    from radfm.tasks.report.model import load_report_model

    path = state.model_dir("report")
    cache = state.extras
    with _LOCK:
        cached = cache.get("report_model")
        if cached is None or cached.path != path:
            cached = load_report_model(path)
            cache["report_model"] = cached
    return cached


def draft_with_backend(state: Any, volume: Any, findings: list[Any] | None, *, max_new_tokens: int = 200
                       ) -> dict[str, Any]:
    """The route's work without HTTP: a :class:`ReportDrafter` on ``state.backend`` → JSON-ready draft."""
    from radfm.tasks.report.drafting import ReportDrafter

    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}.")
    rm = _model(state)
    drafter = ReportDrafter(rm, state.require_backend())
    report, timing = drafter.draft_timed(volume, findings, max_new_tokens=max_new_tokens)
    draft = report.to_dict()
    draft["marker"] = MARKER
    draft["model"] = {"kind": rm.kind, "name": rm.path.name if rm.path else None,
                      "backend": getattr(drafter.backend, "name", type(drafter.backend).__name__),
                      "adapter": drafter.adapter}
    draft["timing_s"] = timing
    return draft


def _sr_b64(out: dict[str, Any], volume: Any, *, deidentify: bool = False) -> str:
    """The JSON draft as a DICOM SR referencing ``volume``'s (still unpacked) series, base64."""
    import base64
    import tempfile
    from pathlib import Path

    from radfm.tasks.report.dicom_sr import write_report_sr
    from radfm.tasks.report.drafting import DraftReport, DraftSentence

    draft = DraftReport(findings_text=out["findings"], impression_text=out["impression"],
                        sentences=[DraftSentence(**s) for s in out.get("sentences", [])], source=out["source"])
    with tempfile.TemporaryDirectory(prefix="radfm-sr-") as tmp:
        path = write_report_sr(draft, volume, Path(tmp) / "report_sr.dcm", marker=MARKER, deidentify=deidentify)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def routes(state: Any) -> APIRouter:
    """The ``/v1/report`` router for the radfm service (see the module docstring for the contract)."""
    router = APIRouter(prefix="/v1", tags=["report"])

    @router.post("/report")
    def report(
        file: UploadFile | None = File(None),  # noqa: B008 - FastAPI's dependency style
        findings: str | None = Form(None),
        modality: str | None = Form(None),
        max_new_tokens: int = Form(200),
        return_sr: bool = Form(False),
        deidentify: bool = Form(False),
    ) -> dict[str, Any]:
        from radfm.check import check_volume
        from radfm.io import load_volume
        from radfm.serve.uploads import discard_upload, save_upload_to_tmp
        from radfm.tasks.report.prompting import parse_findings

        given = parse_findings(findings)
        if modality is not None and modality not in ("CT", "MR"):
            raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}.")
        volume, check, path = None, None, None
        try:
            if file is not None:
                path = save_upload_to_tmp(file)
                volume = load_volume(path, modality=modality)
                rep = check_volume(volume, modality=modality)
                rep.raise_for_errors()
                check = {"ok": rep.ok, "findings": [{"level": f.level, "code": f.code, "message": f.message,
                                                     "hint": f.hint} for f in rep.findings]}
            if return_sr and (path is None or not path.is_dir()):
                raise InputError("a DICOM SR needs a DICOM series as input.", "Upload a zipped DICOM series.")
            if volume is None and given is None:
                raise InputError("nothing to draft from.", "Send an image as 'file', findings as 'findings', or both.")
            out = draft_with_backend(state, volume, given, max_new_tokens=max_new_tokens)
            out["input_check"] = check
            if return_sr:
                out["dicom_sr_b64"] = _sr_b64(out, volume, deidentify=deidentify)
        finally:
            if path is not None:
                discard_upload(path)
        return out

    @router.get("/report/info")
    def info() -> dict[str, Any]:
        rm = _model(state)
        return {"kind": rm.kind, "num_volume_tokens": rm.num_volume_tokens, "prompt_version": rm.meta.get("prompt_version"),
                "task": rm.meta.get("task"), "llm_dir": str(rm.llm_dir) if rm.llm_dir else None,
                "marker": MARKER}

    return router
