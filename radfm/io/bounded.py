"""Bounded decoding: every byte radfm decompresses or allocates is checked before it is spent.

Why: a 1 MB gzip/deflate bomb, or a header that claims 3 GB, used to cost gigabytes of RAM before
any check ran. Here a file's header claim is read first, compared with the memory budget and the
file size, and compressed data is inflated in chunks with a byte cap (the claim plus a little
slack), with the gzip CRC and length checked at the end. The CLI and the HTTP uploads both read
through ``radfm.io.load_volume``, so this is the one bounded path.

Messages name the file (its base name only: no server temp paths) and the problem, never a
header value that could identify a patient.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO

from radfm.errors import InputError, ResourceError

#: Default cap on one decoded image (bytes); ``RADFM_MAX_IMAGE_BYTES`` overrides it.
DEFAULT_MAX_IMAGE_BYTES = 2 * 1024**3
#: Bytes a compressed stream may hold past the header's claim before it counts as a bomb.
SLACK = 1 << 20
CHUNK = 1 << 20


def max_image_bytes() -> int:
    """The memory budget of one decoded image, from ``RADFM_MAX_IMAGE_BYTES`` or the default."""
    raw = os.environ.get("RADFM_MAX_IMAGE_BYTES", "")
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_IMAGE_BYTES
    except ValueError:
        return DEFAULT_MAX_IMAGE_BYTES


def check_claim(name: str, claimed: int, what: str = "its header") -> None:
    """Refuse a decoded size over the budget before anything is allocated."""
    budget = max_image_bytes()
    if claimed < 0:
        raise InputError(f"{name}: {what} gives a negative image size.", "The header is corrupt; export it again.")
    if claimed > budget:
        raise ResourceError(f"{name}: {what} claims {claimed / 2**20:,.0f} MiB of voxels, more than the "
                            f"{budget / 2**20:,.0f} MiB budget for one image.",
                            "Crop or downsample the image, or raise RADFM_MAX_IMAGE_BYTES if it is real.")


def gunzip_bounded(path: Path, cap: int, *, name: str | None = None, offset: int = 0) -> bytes:
    """Decompress a gzip stream (starting at ``offset``) to at most ``cap`` bytes, CRC checked.

    Raises InputError when the stream is not gzip, is cut short, fails its CRC, or inflates past
    ``cap`` (a claim the data does not keep: a bomb or a lying header).
    """
    shown = name or path.name
    with open(path, "rb") as raw:
        raw.seek(offset)
        if raw.read(2) != b"\x1f\x8b":
            raise InputError(f"{shown}: the data is said to be gzip-compressed but is not gzip.",
                             "Fix the header's encoding (raw vs gzip) or export the file again.")
        raw.seek(offset)
        return _read_capped(gzip.GzipFile(fileobj=raw, mode="rb"), cap, shown)


def _read_capped(stream: IO[bytes], cap: int, shown: str) -> bytes:
    out = bytearray()
    try:
        while True:
            chunk = stream.read(min(CHUNK, cap + 1 - len(out)))
            if not chunk:
                break
            out += chunk
            if len(out) > cap:
                raise InputError(f"{shown}: the compressed data inflates to more than the {cap:,} bytes its "
                                 "header declares (a decompression bomb or a corrupt header).",
                                 "Export the image again; radfm refuses data larger than declared.")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        msg = str(exc).lower()
        problem = ("fails its CRC check" if "crc" in msg else
                   "is cut short (no end of stream)" if isinstance(exc, EOFError) or "ended" in msg else
                   f"is corrupt ({type(exc).__name__})")
        raise InputError(f"{shown}: the compressed data {problem}.",
                         "The file is truncated or damaged; copy or export it again.") from None
    return bytes(out)


def inflate_bounded(data: bytes, cap: int, shown: str, *, wbits: int = zlib.MAX_WBITS) -> bytes:
    """Inflate zlib/raw-deflate ``data`` to at most ``cap`` bytes (MetaImage, DICOM deflate)."""
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error:
        raise InputError(f"{shown}: the compressed data is corrupt.", "Copy or export the file again.") from None
    if len(out) > cap:
        raise InputError(f"{shown}: the compressed data inflates to more than {cap:,} bytes (a decompression "
                         "bomb or a corrupt header).", "Export the image again.")
    return out


def count_inflated(data: bytes, cap: int, shown: str, *, wbits: int = zlib.MAX_WBITS) -> int:
    """Size ``data`` inflates to, streamed and discarded (memory stays ~1 MiB); InputError past ``cap``."""
    d = zlib.decompressobj(wbits)
    total = 0
    try:
        pending = data
        while pending and not d.eof:
            total += len(d.decompress(pending, CHUNK))
            pending = d.unconsumed_tail
            if total > cap:
                raise InputError(f"{shown}: the compressed data inflates to more than {cap:,} bytes (a "
                                 "decompression bomb).", "Export the file again without deflate compression.")
    except zlib.error:
        raise InputError(f"{shown}: the compressed data is corrupt.", "Copy or export the file again.") from None
    return total


def require_bytes(shown: str, have: int, need: int, what: str = "voxel data") -> None:
    """A file must hold at least the bytes its header claims (a truncated copy otherwise)."""
    if have < need:
        raise InputError(f"{shown}: the {what} is {have:,} bytes but the header needs {need:,} (the file is "
                         "truncated).", "Copy or export the file again.")


__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "check_claim", "count_inflated", "gunzip_bounded", "inflate_bounded", "max_image_bytes",
           "require_bytes"]
