"""Uploaded images to temporary files: NIfTI, a single DICOM file, or a zipped DICOM series.

Why a shared helper: every router that takes an image (report, segmentation, …) must refuse the
same things the same way — a non-image (415), a zip that writes outside its folder (400), a zip
bomb or a series with too many files (413) — and must not leave patient data on disk. The type
is decided from the bytes (NIfTI magic, gzip + NIfTI magic, ``PK`` zip, ``DICM`` preamble), never
from the client's file name or content type, and files get our own names.

Inside a request served by :func:`radfm.serve.app.create_app`, the limits come from the server's
settings and the temporary folder is deleted when the response has been sent. Elsewhere, call
:func:`discard_upload` yourself.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import shutil
import stat
import tempfile
import zipfile
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from radfm.errors import InputError
from radfm.io.dicom import is_dicom_file

log = logging.getLogger("radfm.serve")

__all__ = [
    "BadArchiveError",
    "UnsupportedMediaError",
    "UploadLimits",
    "UploadTooLargeError",
    "detect_kind",
    "discard_upload",
    "display_name",
    "extract_zip_safely",
    "save_upload_to_tmp",
]

CHUNK = 1 << 20


class UnsupportedMediaError(InputError):
    """The upload is not an image radfm reads (HTTP 415)."""

    http_status = 415


class UploadTooLargeError(InputError):
    """The upload, or what it unpacks to, passes a size or file-count cap (HTTP 413)."""

    http_status = 413


class BadArchiveError(InputError):
    """A zip that is corrupt, encrypted, or names paths outside its folder (HTTP 400)."""

    http_status = 400


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one upload. ``max_bytes``: the upload itself; the rest: what a zip may unpack to."""

    max_bytes: int = 512 * 2**20
    max_zip_members: int = 20_000
    max_extracted_bytes: int = 4 * 2**30


@dataclass
class RequestUploads:
    """Per-request state set by the app: limits, temp root, and folders to delete afterwards."""

    limits: UploadLimits = field(default_factory=UploadLimits)
    tmp_root: Path | None = None
    folders: list[Path] = field(default_factory=list)
    names: dict[Path, str] = field(default_factory=dict)  # folder → the client's file name (error messages)

    def cleanup(self) -> None:
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


# Set per request by the app's middleware; the list inside is shared with the worker thread that
# runs a sync route (contextvars are copied into it, the objects they point to are not).
REQUEST_UPLOADS: ContextVar[RequestUploads | None] = ContextVar("radfm_request_uploads", default=None)


class _Upload(Protocol):  # starlette.datastructures.UploadFile, or anything with .file / .filename
    filename: str | None
    file: IO[bytes]


# ------------------------------------------------------------------------------------ detection
def _nifti_magic(header: bytes) -> bool:
    """NIfTI-1 (``n+1``/``ni1`` at byte 344) or NIfTI-2 (``n+2``/``ni2`` at byte 4)."""
    return header[344:348] in (b"n+1\x00", b"ni1\x00") or header[4:8] in (b"n+2\x00", b"ni2\x00")


def detect_kind(head: bytes, gz_head: bytes | None = None) -> str | None:
    """``"nii"``, ``"nii.gz"``, ``"zip"``, ``"dcm"`` or None, from the first bytes of a file.

    ``gz_head`` is the start of the decompressed stream when ``head`` is gzip.
    """
    if head[:2] == b"\x1f\x8b":
        return "nii.gz" if gz_head is not None and _nifti_magic(gz_head) else None
    if _nifti_magic(head):
        return "nii"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[128:132] == b"DICM":
        return "dcm"
    return None


def _gunzip_head(path: Path, n: int = 560) -> bytes | None:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


# ------------------------------------------------------------------------------------ zip
def _unsafe_member(name: str) -> str | None:
    """Why the member name is unsafe, or None. Absolute paths, ``..``, drive letters, NUL."""
    if "\x00" in name:
        return "a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "a '..' component"
    return None


def extract_zip_safely(archive: Path, dest: Path, limits: UploadLimits) -> list[Path]:
    """Extract the regular files of ``archive`` under ``dest``; refuse anything that could escape.

    Checks every member before writing anything: no absolute/``..``/drive paths (400), no symlinks
    or special files (400), no encryption (400), at most ``max_zip_members`` files and at most
    ``max_extracted_bytes`` declared (413); then streams each file counting the bytes actually
    written, so a header that lies about sizes cannot unpack a bomb. macOS ``__MACOSX`` and
    ``._*`` metadata files are skipped. Returns the written files.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadArchiveError(f"the uploaded zip cannot be read ({type(exc).__name__}).") from None
    dest = dest.resolve()
    with zf:
        members = []
        declared = 0
        for info in zf.infolist():
            reason = _unsafe_member(info.filename)
            if reason:
                raise BadArchiveError(f"the zip has a member path with {reason}; refused (path traversal).",
                                      "Zip the series folder with relative paths.")
            # Unix zips keep st_mode in the high 16 bits; many writers set only permission bits
            ftype = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                raise BadArchiveError("the zip contains a symbolic link or special file; refused.")
            if info.flag_bits & 0x1:
                raise BadArchiveError("the zip is encrypted; send it without a password.")
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            members.append((info, parts))
            declared += info.file_size
        if len(members) > limits.max_zip_members:
            raise UploadTooLargeError(f"the zip holds {len(members)} files, more than the limit of "
                                      f"{limits.max_zip_members}.")
        if declared > limits.max_extracted_bytes:
            raise UploadTooLargeError(f"the zip unpacks to {declared / 2**20:.0f} MB, more than the limit of "
                                      f"{limits.max_extracted_bytes / 2**20:.0f} MB.")
        written_total = 0
        out: list[Path] = []
        for info, parts in members:
            target = dest.joinpath(*parts).resolve()
            if not target.is_relative_to(dest):  # belt and braces after the name check
                raise BadArchiveError("the zip has a member path outside its folder; refused (path traversal).")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    while chunk := src.read(CHUNK):
                        written_total += len(chunk)
                        if written_total > limits.max_extracted_bytes:
                            raise UploadTooLargeError("the zip unpacks to more than the limit of "
                                                      f"{limits.max_extracted_bytes / 2**20:.0f} MB.")
                        dst.write(chunk)
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
                # duplicate names, a file where a folder should be, CRC errors, unsupported methods
                raise BadArchiveError(f"the zip cannot be unpacked ({type(exc).__name__}).") from None
            out.append(target)
    return out


# ------------------------------------------------------------------------------------ public
def _copy_limited(src: IO[bytes], dst: IO[bytes], max_bytes: int) -> int:
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if n > max_bytes:
            raise UploadTooLargeError(f"the upload is larger than the limit of {max_bytes / 2**20:g} MB.")
        dst.write(chunk)
    return n


def save_upload_to_tmp(upload: _Upload | Any, *, limits: UploadLimits | None = None,
                       tmp_root: str | Path | None = None) -> Path:
    """Write an uploaded image to a fresh temporary folder and return what ``radfm.load_volume`` reads.

    Returns ``…/image.nii``, ``…/image.nii.gz`` or ``…/image.dcm`` for a single file, or the folder
    ``…/series/`` for a zipped DICOM series. Raises :class:`UnsupportedMediaError` (415) when the
    bytes are none of these, :class:`BadArchiveError` (400) and :class:`UploadTooLargeError` (413)
    for zips that break the rules of :func:`extract_zip_safely`.

    Blocking (file copies): from an ``async def`` route call it through
    ``starlette.concurrency.run_in_threadpool``; sync routes already run in a thread.
    """
    ctx = REQUEST_UPLOADS.get()
    limits = limits or (ctx.limits if ctx else UploadLimits())
    root = tmp_root or (ctx.tmp_root if ctx else None)
    folder = Path(tempfile.mkdtemp(prefix="radfm-upload-", dir=root))
    if ctx is not None:
        ctx.folders.append(folder)
        ctx.names[folder] = display_name(getattr(upload, "filename", None))
    try:
        raw = folder / "upload.bin"
        src = upload.file
        with contextlib.suppress(AttributeError, OSError):
            src.seek(0)
        with open(raw, "wb") as dst:
            size = _copy_limited(src, dst, limits.max_bytes)
        if size == 0:
            raise UnsupportedMediaError("the upload is empty.", "Send a NIfTI file or a zipped DICOM series.")
        with open(raw, "rb") as fh:
            head = fh.read(560)
        kind = detect_kind(head, _gunzip_head(raw) if head[:2] == b"\x1f\x8b" else None)
        if kind is None:
            raise UnsupportedMediaError("the upload is not an image radfm reads.",
                                        "Send NIfTI (.nii / .nii.gz), a DICOM file, or a zip of one DICOM series.")
        if kind != "zip":
            return raw.rename(folder / f"image.{kind}")
        series = folder / "series"
        series.mkdir()
        try:
            files = extract_zip_safely(raw, series, limits)
        finally:
            raw.unlink(missing_ok=True)
        if not any(is_dicom_file(p) for p in files):
            raise UnsupportedMediaError("the zip holds no DICOM files (none has the DICM preamble).",
                                        "Zip the folder of one DICOM series.")
        return series
    except BaseException:
        discard_upload(folder)
        raise


def discard_upload(path: str | Path) -> None:
    """Delete the temporary folder that :func:`save_upload_to_tmp` made for ``path``.

    Inside a request of the app the folder is only marked: it is deleted after the response, so
    an error body can still be redacted against the uploaded headers (:mod:`radfm.serve.errors`).
    """
    p = Path(path)
    folder = next((q for q in (p, *p.parents) if q.name.startswith("radfm-upload-")), None)
    if folder is None:
        return
    ctx = REQUEST_UPLOADS.get()
    if ctx is not None and folder in ctx.folders:
        return  # deleted by RequestUploads.cleanup once the response is sent
    shutil.rmtree(folder, ignore_errors=True)


def display_name(filename: str | None) -> str:
    """The client's file name as shown in error messages: base name, printable, at most 80 characters."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable() and ch not in "<>\"'`").strip()
    return name[:80] or "the upload"
