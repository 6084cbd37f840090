"""Header pre-checks: what a file claims (shape × type) against the budget and what it holds.

Why before the real reader: nibabel, SimpleITK and numpy allocate the array a header claims
before reading it, and inflate compressed data without a cap. Each check here reads only the
header (and, for compressed data, inflates it through ``radfm.io.bounded`` with a byte cap
equal to the claim), so a bomb or a lying header costs at most the budget, never more.
"""

from __future__ import annotations

import bz2
import math
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from radfm.errors import InputError
from radfm.io.bounded import SLACK, _read_capped, check_claim, gunzip_bounded, inflate_bounded, require_bytes

_MAX_HEADER = 1 << 20
_MAX_VOX_OFFSET = 64 << 20


def _prod(values: list[int]) -> int:
    return math.prod(int(v) for v in values) if values else 0


# ------------------------------------------------------------------------------------ NIfTI
def nifti_precheck(p: Path) -> bytes | None:
    """Validate a NIfTI header; for ``.nii.gz`` return the inflated file (capped, CRC checked)."""
    gz = p.name.lower().endswith(".gz")
    size = p.stat().st_size
    if gz:
        head = _gz_head(p)
    else:
        with open(p, "rb") as fh:
            head = fh.read(544)
    hdr, claimed, offset = _nifti_header(head, p.name)
    need = offset + claimed
    if gz:
        data = gunzip_bounded(p, need + SLACK, name=p.name)
        require_bytes(p.name, len(data), need, "inflated NIfTI")
    else:
        require_bytes(p.name, size, need, "NIfTI file")
        with open(p, "rb") as fh:
            data_head = fh.read(offset)
        _check_extensions(data_head, hdr, offset, p.name)
        return None
    _check_extensions(data[:offset], hdr, offset, p.name)
    return data


def _gz_head(p: Path) -> bytes:
    import gzip

    try:
        with gzip.open(p, "rb") as fh:
            return fh.read(544)
    except (OSError, EOFError, zlib.error):
        raise InputError(f"{p.name}: not a readable gzip file (truncated or corrupt).",
                         "Copy or export the file again.") from None


def _nifti_header(head: bytes, name: str) -> tuple[nib.Nifti1Header, int, int]:
    """(header, claimed voxel bytes, data offset); InputError for an impossible header."""
    if len(head) < 348:
        raise InputError(f"{name}: too short for a NIfTI header ({len(head)} bytes).",
                         "The file is truncated; copy it again.")
    sizeof = int.from_bytes(head[:4], "little")
    if sizeof not in (348, 540):
        sizeof = int.from_bytes(head[:4], "big")
    try:
        if sizeof == 540:
            if len(head) < 540:
                raise InputError(f"{name}: truncated NIfTI-2 header.", "Copy the file again.")
            hdr = nib.Nifti2Header(head[:540], check=False)
        elif sizeof == 348:
            hdr = nib.Nifti1Header(head[:348], check=False)
        else:
            raise InputError(f"{name}: not a NIfTI file (bad header size field).",
                             "Check the file type; export it again as NIfTI.")
        dim = [int(d) for d in hdr["dim"]]
        pixdim = [float(v) for v in hdr["pixdim"]]
        dtype = hdr.get_data_dtype()
        offset = int(hdr["vox_offset"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: the NIfTI header is corrupt ({type(exc).__name__}).",
                         "Export the image again.") from None
    if not 1 <= dim[0] <= 7:
        raise InputError(f"{name}: the NIfTI header has an impossible number of dimensions.",
                         "The header is corrupt; export the image again.")
    axes = dim[1:dim[0] + 1]
    if any(d < 0 for d in axes):
        raise InputError(f"{name}: the NIfTI header gives a negative image size.", "Export the image again.")
    for i in range(1, min(3, dim[0]) + 1):
        if not math.isfinite(pixdim[i]) or pixdim[i] <= 0:
            raise InputError(f"{name}: voxel size pixdim[{i}] is zero, negative or not finite.",
                             "Fix the voxel sizes in the header (e.g. with nibabel) or export the image again.")
    if offset < 0 or offset > _MAX_VOX_OFFSET:
        raise InputError(f"{name}: the NIfTI data offset (vox_offset) is out of range (oversized extension).",
                         "Export the image again without large header extensions.")
    offset = max(offset, sizeof + 4)
    claimed = _prod(axes) * dtype.itemsize
    check_claim(name, claimed)
    return hdr, claimed, offset


def _check_extensions(head: bytes, hdr: nib.Nifti1Header, offset: int, name: str) -> None:
    """Extension sizes must be positive multiples of 16 and end before the voxel data."""
    start = int(hdr["sizeof_hdr"])
    if len(head) < start + 4 or head[start] == 0:
        return
    endian = "<" if hdr.endianness == "<" else ">"
    pos = start + 4
    if pos + 16 > offset:
        raise InputError(f"{name}: the NIfTI header says extensions follow but leaves no room for them (an "
                         "oversized or cut extension).", "Export the image again without header extensions.")
    while pos < offset:
        esize = int(np.frombuffer(head[pos:pos + 4], dtype=f"{endian}i4")[0]) if pos + 8 <= offset else -1
        if esize == 0 and not any(head[pos:offset]):
            return  # zero padding up to the data
        if esize < 8 or esize % 16 or pos + esize > offset:
            raise InputError(f"{name}: a NIfTI header extension has an impossible size (oversized or cut).",
                             "Export the image again without header extensions.")
        pos += esize


# ------------------------------------------------------------------------------------ NRRD / MetaImage
_NRRD_TYPES = {"int8": 1, "uint8": 1, "signed char": 1, "uchar": 1, "unsigned char": 1, "int16": 2, "short": 2,
               "uint16": 2, "ushort": 2, "unsigned short": 2, "short int": 2, "int32": 4, "int": 4, "uint32": 4,
               "uint": 4, "unsigned int": 4, "int64": 8, "longlong": 8, "uint64": 8, "ulonglong": 8,
               "float": 4, "double": 8, "signed short": 2, "signed int": 4}
_MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def sitk_precheck(p: Path, kind: str) -> None:
    """NRRD / MetaImage header claim vs the budget and the data actually present."""
    with open(p, "rb") as fh:
        blob = fh.read(_MAX_HEADER)
    if kind == "nrrd":
        _nrrd(p, blob)
    else:
        _metaimage(p, blob)


def _ints(text: str, name: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise InputError(f"{name}: the header field {field!r} is not a list of integers.",
                         "Fix or export the file again.") from None
    if not values or any(v < 0 for v in values):
        raise InputError(f"{name}: the header field {field!r} is empty or negative.", "Export the file again.")
    return values


def _nrrd(p: Path, blob: bytes) -> None:
    if not blob.startswith(b"NRRD"):
        raise InputError(f"{p.name}: not an NRRD file (no NRRD magic).", "Check the file type.")
    end = blob.find(b"\n\n")
    if end < 0:
        end = blob.find(b"\r\n\r\n")
        if end < 0:
            if p.suffix.lower() == ".nhdr":
                end = len(blob)
            else:
                raise InputError(f"{p.name}: the NRRD header has no end (no blank line).", "Export it again.")
        data_at = end + 4
    else:
        data_at = end + 2
    fields: dict[str, str] = {}
    for line in blob[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    sizes = _ints(fields.get("sizes", ""), p.name, "sizes")
    itemsize = _NRRD_TYPES.get(fields.get("type", "").lower())
    if itemsize is None:
        raise InputError(f"{p.name}: the NRRD type field is missing or unknown.", "Export the file again.")
    claimed = _prod(sizes) * itemsize
    check_claim(p.name, claimed)
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            return  # multi-file data: SimpleITK reads it; each file is still bounded by its size
        target, offset = p.parent / data_file, 0
        if not target.is_file():
            raise InputError(f"{p.name}: its data file {Path(data_file).name} is missing.",
                             "Keep the .nhdr next to its data file.")
    else:
        target, offset = p, data_at
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        out = gunzip_bounded(target, claimed + SLACK, name=p.name, offset=offset)
        require_bytes(p.name, len(out), claimed, "inflated voxel data")
    elif encoding in ("bzip2", "bz2"):
        with open(target, "rb") as fh:
            fh.seek(offset)
            out = _read_capped(bz2.BZ2File(fh), claimed + SLACK, p.name)
        require_bytes(p.name, len(out), claimed, "inflated voxel data")
    elif encoding == "raw":
        require_bytes(p.name, target.stat().st_size - offset, claimed)


def _metaimage(p: Path, blob: bytes) -> None:
    fields: dict[str, str] = {}
    data_at = len(blob)
    pos = 0
    for line in blob.split(b"\n"):
        pos += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            data_at = pos
            break
    if "dimsize" not in fields or "elementdatafile" not in fields:
        raise InputError(f"{p.name}: not a MetaImage header (no DimSize / ElementDataFile).",
                         "Check the file type or export it again.")
    dims = _ints(fields["dimsize"], p.name, "DimSize")
    itemsize = _MET_TYPES.get(fields.get("elementtype", "").upper())
    if itemsize is None:
        raise InputError(f"{p.name}: the MetaImage ElementType is missing or unknown.", "Export the file again.")
    channels = _ints(fields.get("elementnumberofchannels", "1"), p.name, "ElementNumberOfChannels")[0]
    claimed = _prod(dims) * itemsize * max(channels, 1)
    check_claim(p.name, claimed)
    source = fields["elementdatafile"]
    if source.upper() == "LOCAL":
        target, offset = p, data_at
    elif source.upper().startswith("LIST") or "%" in source:
        return
    else:
        target, offset = p.parent / source, 0
        if not target.is_file():
            raise InputError(f"{p.name}: its data file {Path(source).name} is missing.",
                             "Keep the .mhd next to its data file.")
    have = target.stat().st_size - offset
    if fields.get("compresseddata", "false").lower() == "true":
        with open(target, "rb") as fh:
            fh.seek(offset)
            out = inflate_bounded(fh.read(), claimed + SLACK, p.name)
        require_bytes(p.name, len(out), claimed, "inflated voxel data")
    else:
        require_bytes(p.name, have, claimed)


# ------------------------------------------------------------------------------------ numpy
def numpy_precheck(p: Path, suffix: str) -> None:
    """``.npy`` header claim vs file size and budget; every ``.npz`` member too (zip bombs)."""
    if suffix == ".npy":
        with open(p, "rb") as fh:
            claimed = _npy_claim(fh, p.name)
            have = p.stat().st_size - fh.tell()
        require_bytes(p.name, have, claimed, "array data")
        return
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{p.name} is not a readable .npz (zip) file.", "Save it again with numpy.savez.") from None
    with zf:
        total = 0
        for info in zf.infolist():
            total += info.file_size
            check_claim(p.name, total, "its zip directory")
            if info.filename.endswith(".npy"):
                try:
                    with zf.open(info) as fh:
                        claimed = _npy_claim(fh, p.name)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError):
                    raise InputError(f"{p.name}: a member of the .npz cannot be read.",
                                     "Save it again with numpy.savez.") from None
                require_bytes(p.name, info.file_size, claimed, "array member")


def _npy_claim(fh, name: str) -> int:
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fh, max_header_size=10000)
    except Exception as exc:
        raise InputError(f"{name}: not a readable numpy array header ({type(exc).__name__}).",
                         "Save it again with numpy.save.") from None
    if dtype.hasobject:
        raise InputError(f"{name}: the array holds Python objects (a pickle); refused.",
                         "Save a plain numeric array with numpy.save.")
    claimed = _prod(list(shape)) * dtype.itemsize if shape else dtype.itemsize
    check_claim(name, claimed)
    return claimed


__all__ = ["nifti_precheck", "numpy_precheck", "sitk_precheck"]
