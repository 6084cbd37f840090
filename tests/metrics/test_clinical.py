"""Finding-level P/R/F1 between label sets and between reports."""

from __future__ import annotations

import pytest

from radfm.metrics import clinical_efficacy, label_prf, set_prf


def test_label_prf_and_clinical_efficacy() -> None:
    r = label_prf([{"a"}, {"a", "b"}, set()], [{"a"}, {"b"}, {"a"}], labels=["a", "b"])
    assert r["per_label"]["a"]["precision"] == pytest.approx(0.5) and r["per_label"]["a"]["recall"] == pytest.approx(0.5)
    tp, fp, fn = 2, 1, 1
    assert r["micro"]["precision"] == pytest.approx(tp / (tp + fp)) and r["micro"]["recall"] == pytest.approx(tp / (tp + fn))
    ce = clinical_efficacy(["Cardiomegaly. No effusion.", "Left pleural effusion."],
                           ["Enlarged heart.", "No pleural effusion."])
    assert ce["per_label"]["cardiomegaly"]["f1"] == 1.0 and ce["per_label"]["pleural effusion"]["recall"] == 0.0


def test_set_prf_counts_pairs() -> None:
    r = set_prf([{("a", "x"), ("b", "y")}, set()], [{("a", "x")}, {("c", "z")}])
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1) and r["f1"] == pytest.approx(0.5)
    assert set_prf([set()], [set()])["f1"] == 1.0
