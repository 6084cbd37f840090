"""Bounded DICOM reading: a deflated data set inflated with a cap, element lengths against the
file, Rows × Columns × frames × bits against the budget and the pixel bytes, rescale values
checked, and any library exception from a forged header turned into one clear error.

Why apart from ``dicom.py``: these are the checks that run before pydicom allocates or parses
anything a hostile file controls; messages name the file and the element, never its value.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from radfm.errors import InputError, RadfmError
from radfm.io.bounded import check_claim, count_inflated, max_image_bytes

T = TypeVar("T")


def _fg_value(ds: Dataset, frame: Dataset | None, sequence: str, keyword: str) -> Any:
    from radfm.io.dicom import _fg_value as fg

    return fg(ds, frame, sequence, keyword)


def _rescale(ds: Dataset, frame: Dataset | None = None, where: str = "the DICOM file") -> tuple[float, float]:
    out = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = _fg_value(ds, frame, "PixelValueTransformationSequence", keyword)
        try:
            number = float(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
            raise InputError(f"{where}: {keyword} is not a usable number.",
                             "Fix the header (or convert the series with dcm2niix).")
        out.append(number)
    return out[0], out[1]


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    """Decoded stored pixel values; InputError when the codec is missing or data is broken.

    Rows × Columns × frames × samples × bits is checked against the memory budget before the
    decoder allocates it, and, for uncompressed data, against the bytes present.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds or "Columns" in ds:
            raise InputError(f"{where} has image attributes but no pixel data (the file is probably truncated).",
                             "Copy the file or series again.")
        raise InputError(f"{where} holds no image: no pixel data and no image attributes (a report, a "
                         "presentation state, or a file truncated early).",
                         "Point radfm at the image series; if this is an image, copy it again.")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"{where}: Rows, Columns, BitsAllocated, NumberOfFrames or SamplesPerPixel is missing "
                         "or not a number.", "The header is corrupt; export the series again.") from None
    if min(rows, cols, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{where}: impossible image size or bit depth in the header.",
                         "The header is corrupt; export the series again.")
    need = rows * cols * frames * samples * bits // 8 if bits > 1 else (rows * cols * frames * samples + 7) // 8
    check_claim(where, max(need, rows * cols * frames * samples * 4), "its Rows × Columns × frames")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if "PixelData" in ds and syntax in _UNCOMPRESSED:
        have = len(ds.PixelData or b"")
        if have < need:
            raise InputError(f"{where}: the pixel data is {have:,} bytes but Rows × Columns × frames × bits needs "
                             f"{need:,} (a truncated file or a wrong Rows/Columns).", "Copy or export it again.")
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # pydicom logs a decoder's failure with its traceback; ours is the message
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # codec missing, truncated pixel data, odd transfer syntax
        raise InputError(f"Could not decode the pixel data of {where} ({type(exc).__name__}).",
                         "If the file is compressed, convert it to uncompressed DICOM (e.g. `gdcmconv "
                         "--raw`) or to NIfTI (dcm2niix); if it is truncated, copy it again.") from None
    finally:
        quiet.setLevel(level)


def _dcmread(path: Path, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` after bounding a deflated data set (pydicom inflates it all at once)."""
    try:
        meta = pydicom.filereader.read_file_meta_info(str(path))
        syntax = str(meta.get("TransferSyntaxUID", ""))
    except Exception:
        syntax = ""
    if syntax == "1.2.840.10008.1.2.1.99":
        with open(path, "rb") as fh:
            blob = fh.read()
        end = _meta_end(blob)  # past the meta group: inflate what follows, capped
        if end is not None:
            # pydicom holds the whole inflated data set (and copies it): a quarter of the budget
            count_inflated(blob[end:], max_image_bytes() // 4, path.name, wbits=-15)
        del blob
    ds = pydicom.dcmread(str(path), **kwargs)
    _check_lengths(ds, path.name)
    return ds


def _check_lengths(ds: Dataset, shown: str) -> None:
    """An element whose declared length runs past the end of the file: a truncated or forged file.

    pydicom reads such an element short without complaint; its raw (not yet parsed) form still
    carries the declared length, so it is compared before any value is used.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length is None or length == 0xFFFFFFFF or not isinstance(value, bytes | type(None)):
            continue
        if length > len(value or b""):
            name = pydicom.datadict.keyword_for_tag(tag) or "a private element"
            raise InputError(f"{shown}: the element {name} claims more bytes than the file holds (past the end: "
                             "truncated or corrupt).", "Copy or export the file again.")


def _meta_end(blob: bytes) -> int | None:
    """Byte offset just past the file meta group (group 0002), from its group length element."""
    if blob[128:132] != b"DICM" or blob[132:136] != b"\x02\x00\x00\x00":
        return None
    length = int.from_bytes(blob[140:144], "little")
    return 144 + length



def _guard(fn: Callable[..., T]) -> Callable[..., T]:
    """Any non-radfm exception from a forged header (unknown VR, unparsable value…) → one InputError."""
    @functools.wraps(fn)
    def wrapper(path: Path, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(path, *args, **kwargs)
        except (RadfmError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise InputError(f"{Path(path).name}: a DICOM header element is corrupt or unreadable "
                             f"({type(exc).__name__}).", "Copy or export the file or series again.") from None
    return wrapper
