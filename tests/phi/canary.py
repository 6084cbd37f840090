"""Canary DICOM series: a unique marker in every PS3.15 Annex E attribute, private tags and nested sequences.

Why: the only proof that no header value leaks is to plant a value nobody else could print and
search every output for it. The attribute list is PS3.15 Table E.1-1 (Basic Application Level
Confidentiality Profile) as transcribed by ``dicom-anonymizer``
(``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``), read through
:func:`radfm.phi.annex_e_table`; the test checks it holds the attributes everyone knows (Patient's
Name, ID, Birth Date, Institution Name…) so a broken table cannot pass silently.

Markers, one per attribute (``index`` = its position in :attr:`Canary.names`):

- text VRs (AE CS SH LO ST LT UT UC PN UR): ``CNRY<6 hex><4 hex index>`` (14 characters, so it fits
  the 16 of AE/CS/SH and CS's upper-case charset);
- UI: ``2.25.<20 digits>.<index>[.<slice>]``; DA/DT: the date ``18870314``;
- OB/OW/UN: the text marker as bytes; SQ: an item holding a marked PersonName and CodeMeaning and a
  nested sequence with another marked item (three levels deep);
- private tags: a private block with LO, UT and OB members and a private sequence.

DS, IS, AS and binary numbers cannot hold a unique marker: they are listed in
:attr:`Canary.not_carried`. The image itself comes from the real TotalSegmentator CT series
(decoded, cut to 128 × 128, written uncompressed) or, without the shared data, from pydicom's
``CT_small.dcm``.
"""

from __future__ import annotations

import copy
import re
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from radfm.phi import annex_e_table

REAL_SERIES = Path("/work/shared/data/seg3d/totalsegmentator/example_ct_dicom")
DATE = "18870314"
_TEXT = {"AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC", "PN", "UR"}
#: Attributes written per instance (unique per slice) and attributes the reader needs intact.
_PER_INSTANCE = {0x00080018}  # SOP Instance UID
_SKIP = {0x00020003}  # file meta: set from SOP Instance UID


@dataclass
class Canary:
    """The markers of one generated series and where they were planted."""

    token: str = field(default_factory=lambda: "CNRY" + secrets.token_hex(3).upper())
    uid_root: str = field(default_factory=lambda: "2.25." + str(10**19 + secrets.randbelow(9 * 10**19)))
    names: list[str] = field(default_factory=list)  # index → "Keyword (gggg,eeee)" or "private …"
    not_carried: list[str] = field(default_factory=list)

    def text(self, index: int) -> str:
        return f"{self.token}{index:04X}"

    def markers(self) -> list[bytes]:
        """Byte strings whose presence anywhere means a leak (the date only where dates are checked)."""
        return [self.token.encode(), self.uid_root.encode()]

    def find(self, data: bytes | str, *, dates: bool = False) -> list[str]:
        """Names of the attributes whose marker occurs in ``data`` (empty: no leak)."""
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        hits: set[str] = set()
        for m in re.finditer(re.escape(self.token.encode()) + rb"([0-9A-F]{4})?", raw):
            idx = int(m.group(1), 16) if m.group(1) else -1
            hits.add(self.names[idx] if 0 <= idx < len(self.names) else f"token {self.token}")
        for m in re.finditer(re.escape(self.uid_root.encode()) + rb"\.?(\d+)?", raw):
            idx = int(m.group(1)) if m.group(1) else -1
            hits.add(self.names[idx] if 0 <= idx < len(self.names) else f"uid {self.uid_root}")
        if dates and DATE.encode() in raw:
            hits.add(f"date {DATE}")
        return sorted(hits)


def _base_slices(n: int) -> list[Dataset]:
    """``n`` uncompressed 128 × 128 CT slices with real geometry and pixels."""
    files = sorted(p for p in REAL_SERIES.iterdir() if p.is_file())[:n] if REAL_SERIES.is_dir() else []
    out = []
    if files:
        for p in files:
            ds = pydicom.dcmread(p)
            arr = ds.pixel_array[::4, ::4].copy()
            ds.PixelSpacing = [float(v) * 4 for v in ds.PixelSpacing]
            out.append((ds, arr))
    else:
        from pydicom.data import get_testdata_file

        src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        for k in range(n):
            ds = copy.deepcopy(src)
            pos = [float(v) for v in src.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.5 * k]
            out.append((ds, src.pixel_array.copy()))
    slices = []
    for ds, arr in out:
        clean = Dataset()
        for elem in ds:
            if elem.tag.is_private or elem.tag == 0x7FE00010:
                continue
            clean.add(elem)
        clean.Rows, clean.Columns = arr.shape
        clean.PixelData = np.ascontiguousarray(arr.astype(np.int16 if clean.PixelRepresentation else np.uint16)).tobytes()
        clean.SOPClassUID = pydicom.uid.CTImageStorage
        slices.append(clean)
    return slices


def _seq_item(c: Canary, index: int) -> Dataset:
    """A sequence item with marked members and a nested marked sequence (three levels deep)."""
    inner = Dataset()
    inner.CodeMeaning = c.text(index)
    inner.PersonName = f"{c.text(index)}^{c.text(index)}"
    nested = Dataset()
    nested.CodeValue = c.text(index)
    nested.CodingSchemeDesignator = "99RADFM"
    nested.CodeMeaning = c.text(index)
    inner.ConceptNameCodeSequence = Sequence([nested])
    return inner


def _value(c: Canary, vr: str, index: int, slice_no: int, tag: int) -> object | None:
    if vr in _TEXT:
        t = c.text(index)
        return f"{t}^{t}" if vr == "PN" else (f"http://{t}.invalid" if vr == "UR" else t)
    if vr == "UI":
        return f"{c.uid_root}.{index}" + (f".{slice_no + 1}" if tag in _PER_INSTANCE else "")
    if vr == "DA":
        return DATE
    if vr == "DT":
        return DATE + "031415"
    if vr == "TM":
        return "031415"
    if vr in ("OB", "OW", "UN"):
        return (c.text(index) + " ").encode()[:14] * 2
    if vr == "SQ":
        return Sequence([_seq_item(c, index)])
    return None


def build_series(folder: Path, *, n: int = 6, canary: Canary | None = None,
                 single_part_name: bool = False) -> Canary:
    """Write an ``n``-slice CT series with markers in every Annex E attribute and in private tags.

    ``single_part_name``: PatientName as one component (no ``^``), which makes highdicom warn with
    the name in the message.
    """
    c = canary or Canary()
    folder.mkdir(parents=True, exist_ok=True)
    single, _ = annex_e_table()
    tags = sorted(t for t in single if t not in _SKIP and (t >> 16) not in (0x0000, 0x0002))
    tags.append(0x60004000)  # Overlay Comments, one of the repeating-group entries
    slices = _base_slices(n)
    c.names = []
    for t in tags:
        try:
            vr = dictionary_VR(t).split(" or ")[0]
        except KeyError:  # newer than pydicom's dictionary: written as LO (explicit VR keeps it readable)
            vr = "LO"
        name = f"{keyword_for_tag(t) or 'tag'} ({t >> 16:04X},{t & 0xFFFF:04X})"
        c.names.append(name)
        if vr and _value(c, vr, 0, 0, t) is None:
            c.not_carried.append(f"{name} {vr}")
    private_base = len(c.names)
    c.names += ["private LO (0029,1010)", "private UT (0029,1011)", "private OB (0029,1012)",
                "private SQ (0029,1013)"]
    series_uid = f"{c.uid_root}.{c.names.index('SeriesInstanceUID (0020,000E)')}"
    for k, ds in enumerate(slices):
        for i, t in enumerate(tags):
            try:
                vr = dictionary_VR(t).split(" or ")[0]
            except KeyError:
                vr = "LO"
            value = _value(c, vr, i, k, t)
            if value is not None:
                ds.add_new(t, vr, value)
        if single_part_name:
            ds.PatientName = c.text(c.names.index("PatientName (0010,0010)"))
        block = ds.private_block(0x0029, "RADFM CANARY", create=True)
        block.add_new(0x10, "LO", c.text(private_base))
        block.add_new(0x11, "UT", c.text(private_base + 1))
        block.add_new(0x12, "OB", c.text(private_base + 2).encode() * 2)
        block.add_new(0x13, "SQ", Sequence([_seq_item(c, private_base + 3)]))
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.Modality = "CT"
        ds.SeriesNumber = 7
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return c


def break_modality_length(path: Path, length: int = 0xFFFF) -> None:
    """Rewrite the Modality element's 2-byte length (explicit VR LE) to ``length``, in place.

    pydicom then reads the next ``length`` bytes (the patient module and more) as the Modality value.
    """
    data = bytearray(path.read_bytes())
    marker = b"\x08\x00\x60\x00CS"
    pos = data.find(marker, 132)
    if pos < 0:
        raise ValueError("no explicit-VR Modality element found")
    data[pos + 6:pos + 8] = struct.pack("<H", length)
    path.write_bytes(bytes(data))


def output_files(root: Path) -> list[Path]:
    """Every file under ``root`` (the outputs a run wrote)."""
    return sorted(p for p in root.rglob("*") if p.is_file())
