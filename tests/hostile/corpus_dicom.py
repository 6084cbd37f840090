"""DICOM part of the hostile corpus: lying Rows/Columns, truncation, bad rescale, deflate bombs,
element lengths past the end of the file, and series with gaps, duplicates and broken slices."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.hostile.corpus import CANARY, Case, _zeros_deflate

_SERIES = "1.2.826.0.1.3680043.8.498.1"


def _ds(k: int = 0, rows: int = 32, cols: int = 32, z: float | None = None, **over) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = CANARY
    ds.PatientID = "CANARY-ID-4711"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = _SERIES
    ds.SeriesNumber = 3
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 2.0 * k if z is None else z]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    pix = np.random.default_rng(k).integers(0, 2000, (rows, cols)).astype(np.int16)
    ds.PixelData = pix.tobytes()
    for key, value in over.items():
        if key in ("RescaleSlope", "RescaleIntercept") and isinstance(value, str):
            del ds[key]  # a non-number a DS element would refuse: stored with VR LO, as broken exports do
            ds.add_new(pydicom.datadict.tag_for_keyword(key), "LO", value)
        else:
            setattr(ds, key, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _file(name: str, make) -> callable:
    def build(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        path = root / name
        path.write_bytes(make())
        return path
    return build


def _series(n: int = 10, edit=None) -> callable:
    """A folder of ``n`` slices; ``edit(k, ds_bytes_or_ds)`` may change/drop slice k."""
    def build(root: Path) -> Path:
        folder = root / "series"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            ds = _ds(k)
            blob = edit(k, ds) if edit else _bytes(ds)
            if blob is None:
                continue
            (folder / f"s{k:03d}.dcm").write_bytes(blob if isinstance(blob, bytes) else _bytes(blob))
        return folder
    return build


def _deflated(extra: int) -> bytes:
    """A Deflated Explicit VR file whose data set inflates to ``extra`` bytes of zeros (a bomb)."""
    ds = _ds()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    head = _bytes(_ds())
    # Keep a valid preamble + meta header, then a raw-deflate stream of zeros as the data set.
    meta_end = 144 + int.from_bytes(head[140:144], "little")
    meta = bytearray(head[:meta_end])
    ts_old = ExplicitVRLittleEndian.encode()
    idx = meta.find(ts_old)
    new = b"1.2.840.10008.1.2.1.99"
    meta[idx - 2:idx - 2 + 2 + len(ts_old)] = struct.pack("<H", len(new)) + new
    meta[140:144] = struct.pack("<I", len(meta) - 144 + len(new) - len(ts_old))
    meta = bytes(meta)
    meta = meta[:140] + struct.pack("<I", len(meta) - 144) + meta[144:]
    return meta + _zeros_deflate(extra, -15)


def _length_past_eof(keyword: str) -> bytes:
    blob = bytearray(_bytes(_ds()))
    tag = pydicom.datadict.tag_for_keyword(keyword)
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    pos = blob.find(needle, 132 + 12)
    vr = bytes(blob[pos + 4:pos + 6])
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"OF"):
        struct.pack_into("<I", blob, pos + 8, 0x7FFFFFF0)
    else:
        struct.pack_into("<H", blob, pos + 6, 0xFFF0)
    return bytes(blob)


def dicom_cases() -> list[Case]:
    cases: list[Case] = []
    for label, over in (("rows_big", {"Rows": 64}), ("cols_big", {"Columns": 512}), ("bits_32", {"BitsAllocated": 32,
                        "BitsStored": 32, "HighBit": 31}), ("frames_400", {"NumberOfFrames": 400}),
                        ("rows_zero", {"Rows": 0}), ("bits_12", {"BitsAllocated": 12})):
        cases.append(Case(f"dicom_{label}", "rows vs pixel data", _file(f"{label}.dcm", lambda o=over: _bytes(_ds(**o))),
                          ("pixel data is", "impossible", "truncated")))
    cases.append(Case("dicom_claims_huge", "lying header", _file("huge.dcm", lambda: _bytes(_ds(
        Rows=65535, Columns=65535, NumberOfFrames=100))), ("mib budget",)))
    for label, value in (("abc", "abc"), ("nan", "nan"), ("zero", "0"), ("inf", "inf")):
        cases.append(Case(f"dicom_slope_{label}", "bad rescale", _file(f"slope{label}.dcm", lambda v=value: _bytes(
            _ds(RescaleSlope=v))), ("rescaleslope",)))
    cases.append(Case("dicom_intercept_x", "bad rescale", _file("icpt.dcm", lambda: _bytes(_ds(RescaleIntercept="x"))),
                      ("rescaleintercept",)))
    full = _bytes(_ds())
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cases.append(Case(f"dicom_cut_{int(frac * 100)}", "truncated", _file(f"cut{int(frac * 100)}.dcm",
                          lambda f=frac: full[: int(len(full) * f)]), ("truncated", "not a dicom", "could not be read")))
    for kw in ("SeriesDescription", "PatientName", "PixelData", "Modality"):
        if kw == "SeriesDescription":
            make = lambda: _length_past_eof("SeriesNumber")  # noqa: E731
        else:
            make = lambda kw=kw: _length_past_eof(kw)  # noqa: E731
        cases.append(Case(f"dicom_length_past_eof_{kw}", "element length", _file(f"len{kw}.dcm", make),
                          ("truncated", "could not be read", "not a dicom", "past the end", "pixel data", "header")))
    cases.append(Case("dicom_deflate_bomb", "deflate bomb", _file("deflate.dcm", lambda: _deflated(768 << 20)),
                      ("inflates to more", "bomb")))
    cases.append(Case("dicom_jpeg2000_garbage", "corrupt codec", _file("j2k.dcm", _j2k_garbage), ("decode",)))
    cases.append(Case("dicom_no_pixels_truncated", "truncated", _file("nopix.dcm", lambda: full[: full.find(
        b"\xe0\x7f\x10\x00")]), ("truncated",)))
    cases.append(Case("dicom_garbage_dcm", "garbage", _file("junk.dcm", lambda: np.random.default_rng(9).bytes(4000)),
                      ("not a dicom", "could not be read")))
    # series
    cases += [
        Case("series_gap_8mm", "series gap", _series(10, lambda k, ds: None if k in (4, 5, 6) else ds), ("missing",)),
        Case("series_one_missing", "series gap", _series(10, lambda k, ds: None if k == 5 else ds), ("missing",)),
        Case("series_duplicate", "series duplicate", _series(6, lambda k, ds: (setattr(ds, "ImagePositionPatient",
             [0, 0, 2.0 * (k - 1)]) or ds) if k == 3 else ds), ("share a position",)),
        Case("series_truncated_slice", "truncated", _series(6, lambda k, ds: _bytes(ds)[:-300] if k == 2 else ds),
             ("truncated", "pixel data is")),
        Case("series_slope_abc", "bad rescale", _series(6, lambda k, ds: _ds(k, RescaleSlope="abc") if k == 4 else ds),
             ("rescaleslope",)),
        Case("series_rows_mismatch", "rows vs pixel data", _series(6, lambda k, ds: (setattr(ds, "Rows", 64) or ds)
             if k == 1 else ds), ("different size", "pixel data is")),
        Case("series_j2k_slice", "corrupt codec", _series(5, lambda k, ds: _j2k_garbage() if k == 2 else ds),
             ("decode",)),
        Case("series_cut_slice_header", "truncated", _series(5, lambda k, ds: _bytes(ds)[:200] if k == 0 else ds),
             ("truncated", "could not be read", "different size")),
    ]
    return cases


def _j2k_garbage() -> bytes:
    """A JPEG 2000 transfer syntax whose single fragment is random bytes (a corrupted slice)."""
    from pydicom.encaps import encapsulate

    ds = _ds(2)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + np.random.default_rng(3).bytes(400)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


__all__ = ["dicom_cases", "zlib"]
