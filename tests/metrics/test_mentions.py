"""The negation- and uncertainty-aware mention matcher on hand cases."""

from __future__ import annotations

import pytest

from radfm.metrics import LabelSpec, extract_mentions, finding_labels, report_status


@pytest.mark.parametrize(("text", "label", "status"), [
    ("No pleural effusion.", "pleural effusion", "negative"),
    ("Possible atelectasis.", "atelectasis", "uncertain"),
    ("Cannot exclude pneumonia", "pneumonia", "uncertain"),
    ("Pneumonia cannot be excluded.", "pneumonia", "uncertain"),
    ("Cardiomegaly has resolved", "cardiomegaly", "negative"),
    ("Resolved left pleural effusion.", "pleural effusion", "negative"),
    ("The lungs are clear without focal consolidation.", "consolidation", "negative"),
    ("Negative for pneumothorax.", "pneumothorax", "negative"),
    ("Opacity may represent atelectasis.", "atelectasis", "uncertain"),
    ("No focal airspace opacity to suggest pneumonia.", "pneumonia", "negative"),
    ("Stable cardiomegaly without edema.", "cardiomegaly", "positive"),
    ("Stable cardiomegaly without edema.", "edema", "negative"),
    ("No change in the left pleural effusion.", "pleural effusion", "positive"),
    ("No pneumothorax, but there is a small right effusion.", "pleural effusion", "positive"),
    ("Heart size is mildly enlarged.", "cardiomegaly", "positive"),
    ("Degenerative changes of the thoracic spine.", "spine degeneration", "positive"),
])
def test_extractor_negation_and_uncertainty(text, label, status) -> None:
    assert report_status(text).get(label) == status


def test_unmentioned_and_context_dependent_labels() -> None:
    assert report_status("The heart is not enlarged. Normal heart size.") == {}
    assert "spine degeneration" not in report_status("Degenerative changes of the shoulder.")
    assert {m.label for m in extract_mentions("Calcified granuloma. Pericardial effusion.")} == {"granuloma"}
    assert finding_labels("Possible pneumonia.") == set()
    assert finding_labels("Possible pneumonia.", uncertain="positive") == {"pneumonia"}


def test_mentions_carry_their_offsets() -> None:
    (m,) = extract_mentions("There is a small right effusion.")
    assert m.label == "pleural effusion" and m.sentence[m.start:m.end] == m.phrase == "effusion"


def test_vocabularies_are_cached_by_content_not_identity() -> None:
    """Fresh dicts (whose ids Python reuses) must not be read with another vocabulary's patterns."""
    for word in ("nodule", "mass", "cyst", "nodule"):
        (m,) = extract_mentions("A nodule, a mass and a cyst.", {"x": LabelSpec((word,))})
        assert m.phrase == word
