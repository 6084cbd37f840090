"""DICOM SR output (highdicom Comprehensive SR) for report drafts made from a DICOM series.

Why SR: a PACS or viewer files the draft with the study it describes (the SR carries the study's
patient/study modules and references the source instances as evidence). The document is marked
for what it is: Completion Flag PARTIAL and Verification Flag UNVERIFIED, the draft marker as its
first text item, then the FINDINGS and IMPRESSION sections, each finding sentence as its own item.

Privacy: by default patient and study identifiers are copied into the SR file (DICOM requires the
patient/study modules there; it is the output the user asked for) but never into logs, exceptions
or return values. With ``deidentify=True`` the SR is built from copies of the sources passed
through PS3.15 Annex E (basic profile, :class:`radfm.phi.Deidentifier`), and the written SR is
checked by the same table once more (its content tree, written by radfm from the draft, is kept).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from radfm import __version__
from radfm.errors import InputError
from radfm.io.dicom import source_datasets
from radfm.phi import derived_sources, exc_text

__all__ = ["MARKER", "write_report_sr"]

#: The draft marker, first text item of every SR (and of the HTTP answer).
MARKER = "DRAFT — for review by a radiologist"

log = logging.getLogger(__name__)

# LOINC / DICOM codes for a diagnostic imaging report and its sections (PS3.16 CID 7001, TID 2000).
_REPORT = ("18748-4", "LN", "Diagnostic imaging report")
_FINDINGS = ("121070", "DCM", "Findings")
_FINDING = ("121071", "DCM", "Finding")
_IMPRESSIONS = ("121072", "DCM", "Impressions")
_IMPRESSION = ("121073", "DCM", "Impression")
_COMMENT = ("121106", "DCM", "Comment")
# Written by radfm (the draft's content tree, series description): kept by the de-identification pass.
_OWN_SR = {0x0040_A730, 0x0008_103E}
# Type 1/2 attributes of the SR IOD that Annex E lists with X/Z/D choices: replaced, not removed.
_REQUIRED = {0x0008_0020, 0x0008_0030, 0x0008_0050, 0x0008_0090, 0x0010_0010, 0x0010_0020, 0x0010_0030,
             0x0010_0040, 0x0020_0010, 0x0008_0023, 0x0008_0033, 0x0040_A375, 0x0040_A385}


def _code(c: tuple[str, str, str]) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=c[0], scheme_designator=c[1], meaning=c[2])


def _section(name: tuple[str, str, str], item: tuple[str, str, str], texts: list[str]) -> Any:
    import highdicom as hd

    container = hd.sr.ContainerContentItem(name=_code(name), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=_code(item), value=t, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for t in texts
    ])
    return container


def write_report_sr(draft: Any, volume: Any, path: str | Path, *, marker: str = MARKER,
                    deidentify: bool = False) -> Path:
    """Write a draft report as a DICOM Comprehensive SR referencing ``volume``'s source series.

    Args:
        draft: a ``DraftReport`` (``findings_text``, ``impression_text``, ``sentences``).
        volume: the image as loaded from a DICOM series folder (``radfm.io.load_volume``).
        path: output ``.dcm`` file.
        marker: the draft marker stated as the first item ("DRAFT — for review by a radiologist").
        deidentify: apply PS3.15 Annex E basic profile (no patient data in the SR).
    Returns:
        The path written.
    """
    from radfm.io.dicom import import_highdicom

    hd = import_highdicom("DICOM SR")

    datasets, deid = derived_sources(source_datasets(volume), deidentify=deidentify)
    findings = [s.text for s in getattr(draft, "sentences", []) if getattr(s, "section", "findings") == "findings"]
    findings = findings or [draft.findings_text]
    impression = [s.text for s in getattr(draft, "sentences", []) if getattr(s, "section", "") == "impression"]
    impression = impression or [draft.impression_text]
    if not any(t.strip() for t in findings + impression):
        raise InputError("the draft is empty; there is nothing to write as a DICOM SR.")
    root = hd.sr.ContainerContentItem(name=_code(_REPORT), template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=_code(_COMMENT), value=f"{marker} (radfm {__version__}, machine-generated)",
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        _section(_FINDINGS, _FINDING, [t for t in findings if t.strip()]),
        _section(_IMPRESSIONS, _IMPRESSION, [t for t in impression if t.strip()]),
    ])
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=datasets, content=root, series_instance_uid=hd.UID(), series_number=9902,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radfm",
            is_complete=False, is_final=False, is_verified=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom refusing a source header value
        raise InputError(f"the source series' headers do not allow a DICOM SR ({exc_text(exc, datasets)}).",
                         "Use the JSON output instead, or fix the headers.") from None
    sr.SeriesDescription = "radfm DRAFT report"
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the marker's dash and any non-Latin-1 report text
    if deid is not None:
        deid.apply(sr, keep=_OWN_SR, required=_REQUIRED)
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(str(out))
    log.info("wrote DICOM SR %s (%d finding item(s))", out.name, len(findings))
    return out
