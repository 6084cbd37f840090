"""DICOM SR output (highdicom Comprehensive SR) for report drafts made from a DICOM series.

Why SR: a PACS or viewer files the draft with the study it describes (the SR carries the study's
patient/study modules and references the source instances as evidence). The document is marked
for what it is: Completion Flag PARTIAL and Verification Flag UNVERIFIED, the draft marker as its
first text item, then the FINDINGS and IMPRESSION sections, each finding sentence as its own item.

Privacy: patient and study identifiers are copied into the SR file (DICOM requires them there; it
is the output the user asked for) but never into logs, exceptions or return values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from radfm import __version__
from radfm.errors import InputError
from radfm.io.dicom import source_datasets

__all__ = ["write_report_sr"]

log = logging.getLogger(__name__)

# LOINC / DICOM codes for a diagnostic imaging report and its sections (PS3.16 CID 7001, TID 2000).
_REPORT = ("18748-4", "LN", "Diagnostic imaging report")
_FINDINGS = ("121070", "DCM", "Findings")
_FINDING = ("121071", "DCM", "Finding")
_IMPRESSIONS = ("121072", "DCM", "Impressions")
_IMPRESSION = ("121073", "DCM", "Impression")
_COMMENT = ("121106", "DCM", "Comment")


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


def write_report_sr(draft: Any, volume: Any, path: str | Path, *, marker: str) -> Path:
    """Write a draft report as a DICOM Comprehensive SR referencing ``volume``'s source series.

    Args:
        draft: a ``DraftReport`` (``findings_text``, ``impression_text``, ``sentences``).
        volume: the image as loaded from a DICOM series folder (``radfm.io.load_volume``).
        path: output ``.dcm`` file.
        marker: the draft marker stated as the first item ("DRAFT — for review by a radiologist").
    Returns:
        The path written.
    """
    import highdicom as hd

    datasets = source_datasets(volume)
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
    sr = hd.sr.ComprehensiveSR(
        evidence=datasets, content=root, series_instance_uid=hd.UID(), series_number=9902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radfm",
        is_complete=False, is_final=False, is_verified=False,
    )
    sr.SeriesDescription = "radfm DRAFT report"
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the marker's dash and any non-Latin-1 report text
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(str(out))
    log.info("wrote DICOM SR %s (%d finding item(s))", out.name, len(findings))
    return out
