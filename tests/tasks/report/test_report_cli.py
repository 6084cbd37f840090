"""``radfm report`` and ``radfm train report`` end to end on tiny inputs."""

from __future__ import annotations

import csv
import json

from radfm.cli import main


def test_report_from_findings_prints_json(tiny_text_dir, capsys) -> None:
    assert main(["report", "--model", str(tiny_text_dir), "--findings", "Cardiomegaly; Opacity/lung/base/left",
                 "--max-new-tokens", "6", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["is_draft"] is True and {"findings", "impression", "sentences"} <= set(d)


def test_report_needs_something_to_draft_from(tiny_text_dir, capsys) -> None:
    assert main(["report", "--model", str(tiny_text_dir)]) == 2
    assert "nothing to draft from" in capsys.readouterr().err


def test_train_report_from_csv_with_overrides(tmp_path, capsys) -> None:
    p = tmp_path / "reports.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "Problems", "findings", "impression"])
        for i in range(12):
            w.writerow([i, "Cardiomegaly" if i % 2 else "normal",
                        "The heart is enlarged." if i % 2 else "The heart is normal.", "No acute disease."])
    out = tmp_path / "model"
    rc = main(["train", "report", "--reports", str(p), "--label-column", "Problems", "--text-column", "findings",
               "--out", str(out), "--no-progress", "optim.steps=3", "optim.bf16=false", "vocab_size=400",
               "model.hidden_size=64", "model.num_heads=2", "model.num_layers=1", "model.intermediate_size=64"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "radfm_report.json").read_text())
    assert meta["kind"] == "text" and meta["steps"] == 3 and meta["n_reports"] == 12
    assert main(["train", "report", "--reports", str(p), "--label-column", "Nope", "--text-column", "findings",
                 "--out", str(out)]) == 2
    assert "has no column 'Nope'" in " ".join(capsys.readouterr().err.split())
    assert main(["train", "report", "--reports", str(p), "--label-column", "Problems", "--text-column", "findings",
                 "--out", str(out), "optim.lrr=1"]) == 2
