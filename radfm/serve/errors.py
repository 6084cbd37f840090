"""Error bodies of the service: no DICOM element value, no server path, one plain line.

Why a module: an error message is built deep in a loader, which knows only the temporary file it
was handed (``/tmp/radfm-upload-x1y2/series``) and may, through a library, quote a header value.
Every error the app answers (radfm errors, HTTP errors, validation errors) goes through
:func:`scrub` here, which

1. withholds every token that occurs in the headers of the request's uploaded files
   (:func:`radfm.phi.redact` against :func:`radfm.phi.header_blob`), the uploads being kept until
   the response is sent (:func:`radfm.serve.uploads.discard_upload`);
2. replaces the server's temporary paths, and the names radfm gave the files there (``image.dcm``,
   ``upload.bin``), by the file name the client sent.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radfm.phi import header_blob, redact
from radfm.serve.uploads import REQUEST_UPLOADS, RequestUploads

log = logging.getLogger("radfm.serve")

__all__ = ["error_body", "install_handlers", "scrub"]

_SEGMENT = r"[^\s'\"/:;,()\[\]{}<>]+"
#: a path through one of our temporary folders (uploads, sessions), with whatever follows it
_TMP_PATH = re.compile(rf"(?:/{_SEGMENT})*/radfm-(?:upload|session|sr)-[A-Za-z0-9_]+((?:/{_SEGMENT})*)")
#: names radfm gives uploaded files inside their folder
_OWN_NAMES = re.compile(r"(?<![\w.-])(?:image\.nii\.gz|image\.nii|image\.dcm|upload\.bin)(?![\w.-])")
_IN_SERIES = re.compile(r"\bin series\b(?!\s+\d)")
_MARK = "\x00"  # stands for the client's file name while the text is redacted
_MAX_FILES = 4096
#: words of radfm's own messages that real headers also hold (file meta, transfer syntax names)
KEEP = frozenset({"DICOM", "DICM", "NIfTI", "NRRD", "JPEG", "2000", "gzip", "zlib", "deflate", "Part", "file",
                  "files", "series", "slice", "slices", "image", "images", "header", "data", "pixel"})


def _files(uploads: RequestUploads | None) -> list[Path]:
    files: list[Path] = []
    for folder in uploads.folders if uploads else []:
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.is_file())[:_MAX_FILES - len(files)]
    return files


def _name(uploads: RequestUploads | None) -> str:
    names = sorted(set(uploads.names.values())) if uploads else []
    return names[0] if len(names) == 1 else "the upload"


def _strip_own(rest: str) -> str:
    parts = [p for p in rest.split("/") if p and p not in ("series", "image.nii.gz", "image.nii", "image.dcm",
                                                               "upload.bin")]
    return "/".join(parts)


def _redact_piece(piece: str, blob: bytes) -> str:
    """:func:`radfm.phi.redact` keeping the piece's outer spaces (it sits next to a file name)."""
    if not piece.strip():
        return piece
    lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
    return lead + redact(piece, blob=blob, limit=4000, keep=KEEP) + trail


def scrub(text: str, uploads: RequestUploads | None = None, *, limit: int = 400) -> str:
    """``text`` without header values of the request's uploads and without server temp paths (one line)."""
    text = _TMP_PATH.sub(lambda m: _MARK + (f"/{r}" if (r := _strip_own(m.group(1))) else ""), text)
    if uploads is not None and uploads.folders:
        text = _IN_SERIES.sub(f"in {_MARK}", _OWN_NAMES.sub(_MARK, text))
    files = _files(uploads)
    blob = header_blob(files) if files else b""
    out = _name(uploads).join(_redact_piece(p, blob) for p in text.split(_MARK))
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"detail", "hint", "type"}`` of an error, scrubbed against the current request's uploads."""
    from radfm.errors import RadfmError

    uploads = REQUEST_UPLOADS.get()
    if isinstance(exc, RadfmError):
        return {"detail": scrub(exc.problem, uploads), "hint": scrub(exc.hint, uploads), "type": type(exc).__name__}
    if isinstance(exc, StarletteHTTPException):
        return {"detail": scrub(str(exc.detail), uploads), "type": "HTTPException"}
    return {"detail": scrub(str(exc), uploads), "type": type(exc).__name__}


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    """FastAPI's 422 without the ``input`` it echoes (a form field may hold a file's bytes)."""
    uploads = REQUEST_UPLOADS.get()
    errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": scrub(str(e.get("msg", "")), uploads),
               "type": str(e.get("type", ""))} for e in exc.errors()[:10]]
    return {"detail": errors, "type": "RequestValidationError"}


def install_handlers(app: FastAPI, status_for: Any) -> None:
    """Register the scrubbed handlers for radfm errors, HTTP errors and validation errors on ``app``."""
    from radfm.errors import RadfmError
    from radfm.serve.backends import BackendUnavailableError

    async def radfm_error(_: Request, exc: Exception) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse(error_body(exc), status_code=status_for(exc), headers=headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(error_body(exc), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(_validation_body(exc), status_code=422)

    async def backend_error(_: Request, exc: Exception) -> JSONResponse:
        log.warning("LLM backend unavailable: %s", scrub(str(exc)))
        return JSONResponse(error_body(exc), status_code=503)

    app.add_exception_handler(RadfmError, radfm_error)
    app.add_exception_handler(BackendUnavailableError, backend_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
