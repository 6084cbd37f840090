"""IU X-ray MeSH terms mapped to our labels; the chest vocabulary read against the real indexing."""

from __future__ import annotations

import csv

import pytest

from radfm.metrics import finding_labels, label_prf, labels_from_mesh


def test_mesh_mapping() -> None:
    assert labels_from_mesh("Cardiomegaly/borderline;Pulmonary Artery/enlarged") == {"cardiomegaly"}
    assert labels_from_mesh("Lung/hypoinflation/mild;Opacity/lung/base/left") == {"hypoinflation", "opacity"}
    assert labels_from_mesh("normal") == set()


@pytest.mark.shared_data
def test_extractor_agrees_with_iu_xray_mesh_labels(shared_data) -> None:
    """Real reports: the extractor's labels vs the human MeSH indexing (bar: micro F1 ≥ 0.85).

    Measured 0.909 micro / 0.877 macro on all 3,351 reports when the rules were written (the rules
    were developed looking at these reports, so this is agreement, not an independent validation).
    """
    with open(shared_data / "reports" / "iu_xray" / "indiana_reports.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    gold = [labels_from_mesh(r["MeSH"]) for r in rows]
    pred = [finding_labels(f"{r['findings']} {r['impression']}") for r in rows]
    res = label_prf(gold, pred)
    assert res["micro"]["f1"] >= 0.85, res["micro"]
    assert res["per_label"]["cardiomegaly"]["f1"] >= 0.85 and res["per_label"]["pleural effusion"]["f1"] >= 0.8
