"""DICOM SR of a draft: references the real source series, marked partial and unverified, no PHI in logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest

from radfm.errors import InputError
from radfm.io import load_volume
from radfm.tasks.report.dicom_sr import write_report_sr
from radfm.tasks.report.drafting import DraftReport, DraftSentence

MARKER = "DRAFT — for review by a radiologist"


@pytest.fixture(scope="module")
def series(ct_dicom_series: Path) -> Path:
    return ct_dicom_series


def _draft() -> DraftReport:
    return DraftReport(
        findings_text="There is an 8 mm nodule in the right lower lobe. The liver is normal.",
        impression_text="Pulmonary nodule.",
        sentences=[DraftSentence("There is an 8 mm nodule in the right lower lobe.", "findings", link="given"),
                   DraftSentence("The liver is normal.", "findings"),
                   DraftSentence("Pulmonary nodule.", "impression")],
        source="image+findings",
    )


def _texts(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    out = []
    for item in ds.ContentSequence:
        if item.ValueType == "TEXT":
            out.append((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
        for sub in getattr(item, "ContentSequence", []):
            out.append((sub.ConceptNameCodeSequence[0].CodeMeaning, sub.TextValue))
    return out


def test_sr_is_a_partial_unverified_draft_of_the_source_study(series, tmp_path, caplog) -> None:
    vol = load_volume(series)
    with caplog.at_level(logging.DEBUG):
        path = write_report_sr(_draft(), vol, tmp_path / "sr.dcm", marker=MARKER)
    sr = pydicom.dcmread(path)
    src = pydicom.dcmread(next(p for p in sorted(series.iterdir()) if p.is_file()))
    assert sr.Modality == "SR" and sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.StudyInstanceUID == src.StudyInstanceUID  # filed with the study it describes
    texts = _texts(sr)
    assert texts[0][1].startswith(MARKER)
    assert ("Finding", "There is an 8 mm nodule in the right lower lobe.") in texts
    assert ("Impression", "Pulmonary nodule.") in texts
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert len(evidence) == vol.native.shape[2]  # every source slice is referenced
    for field in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(src.get(field, "") or "")
        if value:
            assert value not in caplog.text


def test_sr_needs_a_dicom_series(tmp_path) -> None:
    from radfm.data.phantom import make_phantom

    with pytest.raises(InputError, match="DICOM series"):
        write_report_sr(_draft(), make_phantom(0, shape=(16, 16, 16)).image, tmp_path / "sr.dcm", marker=MARKER)
