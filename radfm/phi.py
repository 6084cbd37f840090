"""PHI guard: what of a DICOM header may be shown, redaction of messages, library output filters.

Why one module: patient data leaked through many small doors (an error quoting a 64 KB Modality
value, a highdicom warning quoting PatientName, a pydicom log line). Every door now goes through
here:

- :data:`ALLOWED_TAGS`: the only DICOM attributes whose *values* may appear in output (check
  reports, JSON, ``Volume.meta``), each with a strict validator (VR charset and length), so a
  malformed value is withheld rather than shown. None is in PS3.15 Annex E (checked by the tests).
  Messages may *name* any attribute ("RescaleSlope is not a number"), never quote its value.
- :func:`redact` / :func:`exc_text`: a message built from a library exception has every header
  value of the datasets at hand, and every token that occurs in the source file's bytes, replaced
  by ``[withheld]``.
- :func:`install`: called by the CLI and the server: pydicom/highdicom warnings are ignored and
  their log records replaced by a value-free line (they routinely quote element values), unless
  ``RADFM_LOG_DETAILS=1``.

De-identification of SEG/SR outputs (PS3.15 Annex E): :class:`Deidentifier`, below.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_TAGS", "ANNEX_E_EDITION", "WITHHELD", "Deidentifier", "annex_e_table", "derived_sources",
           "details_enabled", "exc_text", "format_exception", "header_blob", "install", "redact", "safe_meta", "safe_value"]

WITHHELD = "[withheld]"
DETAILS_ENV = "RADFM_LOG_DETAILS"
_LIBRARIES = ("pydicom", "highdicom")

_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")
_IS = re.compile(r"^[+-]?\d{1,12}$")
_DS = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LO = re.compile(r"^[A-Za-z0-9 _.,+\-/()]{1,64}$")


def _cs(v: Any) -> Any:
    s = str(v).strip()
    return s if _CS.match(s) else None


def _is(v: Any) -> Any:
    s = str(v).strip()
    return int(s) if _IS.match(s) else None


def _ds(v: Any) -> Any:
    s = str(v).strip()
    return float(s) if len(s) <= 16 and _DS.match(s) else None


def _lo(v: Any) -> Any:
    s = str(v).strip()
    return s if _LO.match(s) else None


#: DICOM keyword → (meta key, validator). Values of these attributes, and only these, may be shown.
#: Series Description, dates, names, IDs, UIDs, institution, station etc. are Annex E attributes: never.
ALLOWED_TAGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "Modality": ("dicom_modality", _cs),
    "SeriesNumber": ("series_number", _is),
    "Manufacturer": ("manufacturer", _lo),
    "ManufacturerModelName": ("manufacturer_model", _lo),
    "SliceThickness": ("slice_thickness", _ds),
    "BodyPartExamined": ("body_part", _cs),
    "MagneticFieldStrength": ("field_strength_t", _ds),
    "KVP": ("kvp", _ds),
    "ConvolutionKernel": ("convolution_kernel", _lo),
    "PhotometricInterpretation": ("photometric_interpretation", _cs),
}


def safe_value(ds: Any, keyword: str) -> Any:
    """The value of an allowed attribute as a plain Python value, or None (absent, not allowed, malformed).

    Multi-valued attributes give a list when every item passes the validator.
    """
    entry = ALLOWED_TAGS.get(keyword)
    if entry is None or ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:  # a broken raw element: withheld like any other malformed value
        return None
    if value is None or value == "":
        return None
    check = entry[1]
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        items = [check(v) for v in value]
        return items if items and len(items) <= 8 and all(i is not None for i in items) else None
    return check(value)


def safe_meta(ds: Any) -> dict[str, Any]:
    """``{meta key: value}`` of the allowed attributes that are present and well-formed."""
    out: dict[str, Any] = {}
    for keyword, (key, _) in ALLOWED_TAGS.items():
        value = safe_value(ds, keyword)
        if value is not None:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------ redaction
def _values(ds: Any, out: set[str], depth: int = 0) -> None:
    """Every element value of ``ds`` (nested sequences, private tags, file meta) as strings."""
    if depth > 16:
        return
    try:
        elements = list(ds.iterall()) if depth == 0 else list(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and depth == 0:
            elements += list(meta)
    except Exception:
        return
    for elem in elements:
        try:
            value = elem.value
        except Exception:
            continue
        if elem.VR == "SQ":
            continue  # iterall already walks into sequence items
        if isinstance(value, bytes | bytearray):
            if len(value) <= 1 << 16:  # private/unknown blobs; pixel data is never quoted by value
                out.update(s.decode("ascii") for s in re.findall(rb"[\x21-\x7e]{4,}", bytes(value)))
            continue
        items = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            s = str(item)
            if len(s) >= 3:
                out.add(s)
                out.update(p for p in re.split(r"[\^=\\]", s) if len(p) >= 3)


_TOKEN = re.compile(r"[^\s'\"(),;=\[\]{}<>]{4,}")


def redact(text: str, datasets: Iterable[Any] = (), files: Iterable[str | Path] = (), *, limit: int = 400,
           blob: bytes = b"", keep: frozenset[str] = frozenset()) -> str:
    """``text`` with every header value of ``datasets`` and every token found in ``files`` withheld.

    Why both: a dataset in hand gives its exact values (a PatientName quoted in an exception); a
    file that failed to parse has no dataset, but any header value a message could quote is bytes
    of that file (a token of 4+ characters that occurs in the file is withheld). The result is cut
    to ``limit`` characters: a message is never a dump. ``blob`` (see :func:`header_blob`) is a
    cheaper stand-in for many files: a token found in it is withheld too. ``keep``: words of the
    caller's own message vocabulary ("DICOM") never withheld for occurring in ``blob``.
    """
    values: set[str] = set()
    for ds in datasets:
        _values(ds, values)
    for v in sorted(values, key=len, reverse=True):
        if v in text and v not in (WITHHELD,):
            text = text.replace(v, WITHHELD)
    for path in files:
        text = _redact_file_tokens(text, Path(path))
    if blob:
        text = _redact_tokens(text, lambda part: part in blob, keep)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redact_tokens(text: str, found: Callable[[bytes], bool], keep: frozenset[str] = frozenset()) -> str:
    """Withhold each token of ``text`` one of whose alphanumeric parts (not in ``keep``) ``found`` says is there."""
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == WITHHELD:
            return token
        parts = re.findall(r"[A-Za-z0-9^]{4,}", token) or [token]
        hit = any(p not in keep and found(p.encode("utf-8", "ignore")) for p in parts)
        return WITHHELD if hit else token
    return _TOKEN.sub(sub, text)


def _redact_file_tokens(text: str, path: Path) -> str:
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _redact_tokens(text, lambda part: mm.find(part) >= 0)
    except (OSError, ValueError):  # unreadable or empty file: nothing to compare with, withhold all
        return _TOKEN.sub(WITHHELD, text) if path.exists() else text


_PIXEL_DATA = b"\xe0\x7f\x10\x00"


def header_blob(paths: Iterable[str | Path], *, head_bytes: int = 1 << 16, max_files: int = 4096) -> bytes:
    """The printable runs of the files' headers, deduplicated and NUL-separated, for :func:`redact`.

    Why not the whole files: an upload may be a zipped series of thousands of slices, and redacting
    an error message against each file's bytes would scan gigabytes. Header values sit before the
    pixel data, so the first ``head_bytes`` of each file (cut at the PixelData tag) hold them; runs
    repeat across slices and are kept once. At most ``max_files`` files are read.
    """
    runs: set[bytes] = set()
    for n, path in enumerate(paths):
        if n >= max_files:
            break
        try:
            with open(path, "rb") as fh:
                head = fh.read(head_bytes)
        except OSError:
            continue
        cut = head.find(_PIXEL_DATA, 132)
        runs.update(re.findall(rb"[\x21-\x7e]{4,}", head[:cut] if cut > 0 else head))
    return b"\x00".join(sorted(runs))


def exc_text(exc: BaseException, datasets: Iterable[Any] = (), files: Iterable[str | Path] = ()) -> str:
    """``"TypeName: message"`` of a library exception, redacted (see :func:`redact`), at most 200 chars."""
    message = redact(str(exc), datasets, files, limit=200)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# ------------------------------------------------------------------------------------ filters
def details_enabled() -> bool:
    """True when ``RADFM_LOG_DETAILS=1``: library messages are shown as they are (they may hold PHI)."""
    return os.environ.get(DETAILS_ENV, "").strip().lower() in ("1", "true", "yes")


_installed = False


def install() -> None:
    """Filter pydicom/highdicom output for the process (idempotent). Called by the CLI and the server.

    Warnings whose origin module is pydicom or highdicom are ignored (e.g. highdicom's "The string
    "DOE" is unlikely to represent the intended person name", pydicom's "Invalid value for VR PN:
    ..."); their log records (pydicom logs each warning too) keep level and logger but say only
    that a message was withheld. ``RADFM_LOG_DETAILS=1`` leaves both untouched.
    """
    global _installed
    if _installed or details_enabled():
        return
    _installed = True
    for lib in _LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"^{lib}(\.|$)")
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.split(".", 1)[0] in _LIBRARIES:
            record.msg = (f"{record.name} {record.levelname.lower()} withheld (DICOM library messages can "
                          f"quote header values; {DETAILS_ENV}=1 shows them)")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return record

    logging.setLogRecordFactory(factory)
    sys.excepthook = _excepthook
    threading.excepthook = lambda a: _excepthook(a.exc_type, a.exc_value, a.exc_traceback)  # type: ignore[arg-type]


def format_exception(exc: BaseException) -> str:
    """A traceback with every frame but without the exception's message (it may quote header values)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return (f"Traceback (most recent call last):\n{frames}{type(exc).__name__} (message withheld: it may "
            f"quote patient data; {DETAILS_ENV}=1 shows it). This is a bug in radfm: please report it.\n")


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if details_enabled() or not isinstance(exc, Exception):
        sys.__excepthook__(exc_type, exc, tb)
        return
    sys.stderr.write(format_exception(exc.with_traceback(tb)))


# ------------------------------------------------------------------------------------ de-identification
#: Edition of PS3.15 Table E.1-1 (Basic Application Level Confidentiality Profile) used for
#: ``--deidentify``: the table as transcribed by the ``dicom-anonymizer`` package (Kitware,
#: ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``).
ANNEX_E_EDITION = "dicomfields_2026c"
_GROUPS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
           "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
DEID_METHOD = "PS3.15 Annex E Basic Application Level Confidentiality Profile (radfm)"


def annex_e_table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """PS3.15 Table E.1-1 as ``({tag: action}, [(group, element, group_mask, element_mask, action)])``.

    Actions: D (dummy), Z (empty), X (remove), U (new UID, consistent), and the combined ones
    (X/Z, X/D, X/Z/D, X/Z/U*) whose choice depends on the IOD's attribute type. The second list
    holds the repeating groups (curves 50xx, overlays 60xx).
    """
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector(ANNEX_E_EDITION)
    single: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for group, action in _GROUPS.items():
        for t in db[group]:
            if len(t) == 2:
                single[(t[0] << 16) | t[1]] = action
            else:
                masked.append((t[0], t[1], t[2], t[3], action))
    return single, masked


def _action(tag: int, single: dict[int, str], masked: list[tuple[int, int, int, int, str]]) -> str | None:
    action = single.get(tag)
    if action is not None:
        return action
    g, e = tag >> 16, tag & 0xFFFF
    for mg, me, gm, em, act in masked:
        if g & gm == mg & gm and e & em == me & em:
            return act
    return None


_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "PN": "ANONYMIZED^",
          "UR": "http://anonymized.invalid", "DS": "0", "IS": "0"}


def derived_sources(datasets: list[Any], *, deidentify: bool) -> tuple[list[Any], Deidentifier | None]:
    """Copies of the source datasets a SEG/SR is built from: de-identified when asked, and checked.

    By default a derived object references the source study and carries its patient/study modules
    (PS3.3 requires them; it is the output the user asked for). With ``deidentify`` the copies
    pass through :class:`Deidentifier` first, so highdicom copies replaced values and references
    remapped UIDs. Either way a Patient's Sex outside M/F/O (highdicom would raise quoting it)
    becomes empty (Type 2). The files on disk are never changed.
    """
    import copy

    out = [copy.deepcopy(ds) for ds in datasets]
    deid = Deidentifier() if deidentify else None
    for ds in out:
        if "PatientSex" in ds and str(ds.PatientSex or "") not in ("", "M", "F", "O"):
            ds.PatientSex = ""
        if deid is not None:
            deid.apply(ds)
    return out, deid


class Deidentifier:
    """Apply PS3.15 Annex E (basic profile) to datasets, one UID map shared by all of them.

    Why a class: the UIDs of the source instances, the study and the frame of reference are
    replaced the same way wherever they occur (in each source dataset and in the references of
    the SEG/SR made from them), so a de-identified output still references a consistent study.
    ``keep``: tags left alone at the top level (content radfm wrote itself, e.g. an SR's
    ContentSequence). ``required``: tags the output's IOD needs, so X/Z/D choices replace rather
    than remove them.
    """

    def __init__(self) -> None:
        self.single, self.masked = annex_e_table()
        self.uids: dict[str, str] = {}
        self.salt = os.urandom(16).hex()

    def uid(self, old: str) -> str:
        from pydicom.uid import generate_uid

        if old not in self.uids:
            self.uids[old] = generate_uid(entropy_srcs=[self.salt, old])
        return self.uids[old]

    def apply(self, ds: Any, *, keep: Iterable[int] = (), required: Iterable[int] = ()) -> Any:
        """De-identify ``ds`` in place (nested sequences and file meta too); returns it."""
        self._apply(ds, set(keep), set(required), top=True)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(str(meta.MediaStorageSOPInstanceUID))
        ds.remove_private_tags()
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEID_METHOD
        from pydicom.dataset import Dataset

        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = [code]
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        return ds

    def _apply(self, ds: Any, keep: set[int], required: set[int], *, top: bool) -> None:
        for elem in list(ds):
            tag = int(elem.tag)
            if top and tag in keep:
                continue
            if elem.tag.is_private:
                del ds[elem.tag]
                continue
            action = _action(tag, self.single, self.masked)
            if elem.VR == "SQ" and action not in ("X", "Z"):
                if action is not None and action.startswith("X") and tag not in required:
                    del ds[elem.tag]
                    continue
                for item in elem.value:
                    self._apply(item, keep, required, top=False)
                continue
            if action is None:
                continue
            if action == "U" or (action == "X/Z/U*" and elem.VR == "UI"):
                self._uid(elem)
            elif action == "X" or (action.startswith("X") and tag not in required):
                del ds[elem.tag]
            elif action == "Z" or action in ("X/Z", "X/Z/U*"):
                elem.value = [] if elem.VR == "SQ" else None
            else:  # D, Z/D, X/D, X/Z/D on a required attribute: a dummy of the VR
                self._dummy(elem)

    def _uid(self, elem: Any) -> None:
        if elem.value in (None, ""):
            return
        if isinstance(elem.value, str):
            elem.value = self.uid(elem.value)
        else:
            elem.value = [self.uid(str(v)) for v in elem.value]

    def _dummy(self, elem: Any) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._apply(item, set(), set(), top=False)
        elif vr == "UI":
            self._uid(elem)
        elif vr in _DUMMY:
            elem.value = _DUMMY[vr]
        elif vr in ("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"):
            elem.value = "ANONYMIZED"
        elif vr in ("FD", "FL", "SS", "US", "SL", "UL", "SV", "UV"):
            elem.value = 0
        else:  # OB, OW, UN …: nothing meaningful to keep
            elem.value = b""
