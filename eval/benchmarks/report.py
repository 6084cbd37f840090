"""``radfm bench report``: report drafting on real IU X-ray text and on simulated phantoms.

Three parts, two docs sections:

1. **IU X-ray, findings-conditioned drafting** (section ``report``). The text drafter is trained
   on the R2Gen *train* split of the real IU X-ray reports, conditioned on each report's MeSH
   labels (``Findings: Cardiomegaly/borderline; Opacity/lung/base/left``), and drafts the *test*
   split from the test reports' labels. Scored like R2Gen: the generated FINDINGS section against
   the reference findings (BLEU-1..4, ROUGE-L, METEOR, CIDEr), plus clinical efficacy (our
   extractor's finding labels of the whole draft vs those of the whole reference report, and vs
   the MeSH labels). Beside it: R2Gen's published IU numbers (BLEU-4 0.165, ROUGE-L 0.371 — they
   generate from the *images*; we condition on gold labels, an easier task, so the numbers are not
   comparable as a contest) and a label-matched retrieval baseline (the training report whose
   label set is closest), which shows what the labels alone are worth.
2. **Simulated image→report** (section ``report``): the starter model (or one trained here with
   ``--train-phantoms N``) drafts held-out SIMULATED phantoms from the image alone, from the image
   plus ground-truth findings, and from the findings alone; finding-level P/R/F1 of the
   ``(finding, organ)`` pairs stated.
3. **Extractor validation** (section ``report-extractor``): the rule-based extractor's labels on
   all 3,351 IU reports vs the human MeSH indexing, per label and micro/macro.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import radfm  # noqa: F401  (torchvision shim before transformers)
from radfm.data.shared import shared_data_root
from radfm.eval.benchreport import add_output_args, default_md_path, machine_info, write_section
from radfm.metrics import CHEST_LABELS, clinical_efficacy, finding_labels, label_prf, labels_from_mesh
from radfm.metrics.nlg import report_generation_metrics

NAME = "report"
TITLE = "Report drafting: IU X-ray (real text, label-conditioned) and simulated image→report"
EXTRACTOR_NAME = "report-extractor"
EXTRACTOR_TITLE = "Report finding extractor vs IU X-ray MeSH labels (real reports)"
R2GEN_IU = {"bleu4": 0.165, "rouge_l": 0.371}  # Chen et al., EMNLP 2020, IU X-ray test split

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="folder with indiana_reports.csv and r2gen_annotation.json "
                        "(default: reports/iu_xray of $RADFM_SHARED_DATA or ../shared/data)")
    p.add_argument("--label-column", default="MeSH", help="conditioning labels: MeSH (default) or Problems")
    p.add_argument("--model", type=Path, default=None,
                   help="evaluate this text drafter folder instead of training one (it must have been "
                        "trained on the R2Gen train split only)")
    p.add_argument("--save-model", type=Path, default=None, help="keep the trained drafter here")
    p.add_argument("--epochs", type=float, default=None, help="drafter epochs (default: the recipe's 10)")
    p.add_argument("--limit-test", type=int, default=None, help="score only the first N test reports (smoke runs)")
    p.add_argument("--phantom-model", type=Path, default=None,
                   help="image→report model for the simulated part (default: the shipped starter model)")
    p.add_argument("--train-phantoms", type=int, default=None,
                   help="train a phantom model on N phantoms instead of evaluating the shipped one")
    p.add_argument("--n-phantoms", type=int, default=50, help="held-out phantoms to draft (default 50)")
    p.add_argument("--skip-iu", action="store_true")
    p.add_argument("--skip-simulated", action="store_true")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (Java)")
    p.add_argument("--threads", type=int, default=None)
    add_output_args(p)
    return p


def _data_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    return (shared_data_root() or Path("../shared/data")) / "reports" / "iu_xray"


def load_iu(data: Path, label_column: str) -> dict[str, list[dict[str, Any]]]:
    """R2Gen splits joined with the CSV: per split, rows with uid, labels, findings, impression, mesh."""
    from radfm.tasks.report.prompting import normalize_text, parse_label_string

    csv_path, ann_path = data / "indiana_reports.csv", data / "r2gen_annotation.json"
    if not csv_path.is_file() or not ann_path.is_file():
        raise FileNotFoundError(f"IU X-ray files not found in {data} (indiana_reports.csv, r2gen_annotation.json); "
                                "pass --data DIR")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = {r["uid"]: r for r in csv.DictReader(fh)}
    ann = json.loads(ann_path.read_text())
    out: dict[str, list[dict[str, Any]]] = {}
    for split, items in ann.items():
        recs = []
        for a in items:
            uid = a["id"].split("_")[0].removeprefix("CXR")
            r = rows[uid]
            recs.append({"uid": uid, "labels": parse_label_string(r[label_column]),
                         "findings": normalize_text(r["findings"]) or normalize_text(a["report"]),
                         "impression": normalize_text(r["impression"]) or None, "mesh": r["MeSH"]})
        out[split] = recs
    return out


def retrieval_baseline(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """For each test case, the training report whose label set is closest (Jaccard; ties: most common text)."""
    text_count = Counter((r["findings"], r["impression"] or "") for r in train)
    keyed = [(frozenset(x.lower() for x in r["labels"]), (r["findings"], r["impression"] or "")) for r in train]
    out = []
    for t in test:
        q = frozenset(x.lower() for x in t["labels"])
        best = max(keyed, key=lambda kv: (len(q & kv[0]) / max(len(q | kv[0]), 1), text_count[kv[1]]))
        out.append(best[1])
    return out


def _score(refs_f: list[str], refs_full: list[str], mesh: list[str], findings: list[str], full: list[str],
           meteor: bool) -> dict[str, Any]:
    m = report_generation_metrics(refs_f, findings, with_meteor=meteor)
    ce = clinical_efficacy(refs_full, full)
    gold = [labels_from_mesh(x) for x in mesh]
    ce_mesh = label_prf(gold, [finding_labels(t) for t in full], list(CHEST_LABELS))
    return {**m, "ce_micro": ce["micro"], "ce_macro": ce["macro"], "ce_mesh_micro": ce_mesh["micro"],
            "ce_per_label": {k: v["f1"] for k, v in ce["per_label"].items()}}


def run_iu(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train (or load) the drafter, draft the test split, score; returns table rows and raw results."""
    from radfm.tasks.report.model import load_report_model
    from radfm.tasks.report.text_drafter import (
        ReportRecord,
        TextDrafterConfig,
        generate_reports,
        train_text_drafter,
    )

    data = load_iu(_data_dir(args.data), args.label_column)
    train, test = data["train"], data["test"]
    if args.limit_test:
        test = test[: args.limit_test]
    t0 = time.perf_counter()
    c0 = time.process_time()
    if args.model is not None:
        rm = load_report_model(args.model)
        train_s, train_cpu = rm.meta.get("train_seconds"), rm.meta.get("train_cpu_seconds")
    else:
        cfg = TextDrafterConfig()
        if args.epochs is not None:
            cfg.epochs = args.epochs
        recs = [ReportRecord(r["labels"], r["findings"], r["impression"], r["uid"]) for r in train]
        rm = train_text_drafter(recs, args.save_model, cfg, progress=True, source="IU X-ray R2Gen train split")
        train_s, train_cpu = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    t1 = time.perf_counter()
    drafts = generate_reports(rm, [r["labels"] for r in test], max_new_tokens=200)
    gen_s = time.perf_counter() - t1
    refs_f = [r["findings"] for r in test]
    refs_full = [f"{r['findings']} {r['impression'] or ''}" for r in test]
    mesh = [r["mesh"] for r in test]
    ours = _score(refs_f, refs_full, mesh, [d[0] for d in drafts], [f"{d[0]} {d[1]}" for d in drafts],
                  not args.no_meteor)
    retr = retrieval_baseline(train, test)
    base = _score(refs_f, refs_full, mesh, [d[0] for d in retr], [f"{d[0]} {d[1]}" for d in retr],
                  not args.no_meteor)

    def row(name: str, cond: str, s: dict[str, Any]) -> dict[str, Any]:
        return {"system": name, "input": cond, "BLEU-1": s.get("bleu1"), "BLEU-2": s.get("bleu2"),
                "BLEU-3": s.get("bleu3"), "BLEU-4": s.get("bleu4"), "METEOR": s.get("meteor"),
                "ROUGE-L": s.get("rouge_l"), "CIDEr": s.get("cider"),
                "CE F1 (vs ref. text)": s["ce_micro"]["f1"] if "ce_micro" in s else None,
                "CE P": s["ce_micro"]["precision"] if "ce_micro" in s else None,
                "CE R": s["ce_micro"]["recall"] if "ce_micro" in s else None,
                "CE F1 (vs MeSH)": s["ce_mesh_micro"]["f1"] if "ce_mesh_micro" in s else None}

    rows = [row("radfm text drafter (ours)", f"gold {args.label_column} labels", ours),
            row("label-matched retrieval", f"gold {args.label_column} labels", base),
            row("R2Gen (Chen et al. 2020, published)", "images", R2GEN_IU)]
    raw = {"n_train": len(train), "n_test": len(test), "train_seconds": train_s, "train_cpu_seconds": train_cpu,
           "generate_seconds": round(gen_s, 1), "ours": ours, "retrieval": base, "r2gen_published": R2GEN_IU,
           "model_meta": rm.meta, "examples": [{"labels": t["labels"], "draft": d} for t, d in zip(test[:3], drafts)]}
    return rows, raw


def run_simulated(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Draft held-out phantoms with the image→report model; finding-level P/R/F1 per prompt variant."""
    from radfm.tasks.report.model import load_report_model
    from radfm.tasks.report.phantom_recipe import (
        PhantomReportConfig,
        evaluate_phantom_model,
        make_cases,
        train_phantom_report_model,
    )

    t0 = time.perf_counter()
    if args.train_phantoms:
        cfg = PhantomReportConfig(n_train=args.train_phantoms, n_val=args.n_phantoms)
        rm = train_phantom_report_model(cfg)
        recipe = cfg
    else:
        rm = load_report_model(args.phantom_model)
        rec = rm.meta.get("recipe", {})
        recipe = PhantomReportConfig(n_val=args.n_phantoms, shape=tuple(rec.get("shape", (64, 64, 64))),
                                     spacing=tuple(rec.get("spacing", (3.0, 3.0, 3.0))),
                                     modality=rec.get("modality", "CT"))
    cases = make_cases(recipe, held_out=True)
    res = evaluate_phantom_model(rm, cases)
    rows = []
    for v, name in (("image", "image only"), ("image+findings", "image + ground-truth findings"),
                    ("findings", "ground-truth findings only"), ("none", "baseline: states no finding")):
        r = res[v]
        rows.append({"system": f"phantom model: {name}", "input": "SIMULATED phantom",
                     "finding P": r["precision"], "finding R": r["recall"], "finding F1": r["f1"]})
    raw = {"n": len(cases), "seconds": round(time.perf_counter() - t0, 1), "results": res, "model_meta": rm.meta}
    return rows, raw


def run_extractor(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Extractor labels on every IU report vs its MeSH labels (both hedged-mention conventions)."""
    path = _data_dir(args.data) / "indiana_reports.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts = [f"{r['findings']} {r['impression']}" for r in rows]
    gold = [labels_from_mesh(r["MeSH"]) for r in rows]
    res = {u: label_prf(gold, [finding_labels(t, uncertain=u) for t in texts], list(CHEST_LABELS))  # type: ignore[arg-type]
           for u in ("negative", "positive")}
    table = [{"label": k, "support (MeSH)": v["support"], "extracted": v["predicted"], "precision": v["precision"],
              "recall": v["recall"], "F1": v["f1"], "F1 (hedged = positive)": res["positive"]["per_label"][k]["f1"]}
             for k, v in res["negative"]["per_label"].items()]
    for avg in ("micro", "macro"):
        table.append({"label": f"**{avg}**", "precision": res["negative"][avg]["precision"],
                      "recall": res["negative"][avg]["recall"], "F1": res["negative"][avg]["f1"],
                      "F1 (hedged = positive)": res["positive"][avg]["f1"]})
    return table, {"n_reports": len(rows), "results": res}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for, print the tables and write the two docs sections."""
    from radfm.eval.benchreport import markdown_table

    args = _parser().parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    command = ("radfm bench report " + shlex.join(list(argv or []))).strip()
    machine = machine_info()
    out: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if not args.skip_iu:
        ext_rows, ext_raw = run_extractor(args)
        out["extractor"] = ext_raw
        print(markdown_table(ext_rows))
        if not args.no_write:
            write_section(args.out or default_md_path(), EXTRACTOR_NAME, title=EXTRACTOR_TITLE, command=command,
                          table=ext_rows, notes=_extractor_notes(ext_raw), results=ext_raw, machine=machine,
                          json_path=None if args.json_path is None else args.json_path.with_name(
                              f"{EXTRACTOR_NAME}.json"))
        iu_rows, iu_raw = run_iu(args)
        rows += iu_rows
        out["iu"] = iu_raw
    if not args.skip_simulated:
        sim_rows, sim_raw = run_simulated(args)
        rows += sim_rows
        out["simulated"] = sim_raw
    print(markdown_table(rows))
    if not args.no_write and rows:
        write_section(args.out or default_md_path(), NAME, title=TITLE, command=command, table=rows,
                      notes=_notes(args, out), json_path=args.json_path, results=out, machine=machine)
    return out


def _extractor_notes(raw: dict[str, Any]) -> str:
    return (f"All {raw['n_reports']} IU X-ray reports (findings + impression) read by `radfm.metrics.mentions` "
            "and compared with the labels the human MeSH indexers gave each report (mapped to our labels by "
            "`IU_MESH_TO_LABEL`). F1 counts a hedged mention (\"possible pneumonia\") as absent — the "
            "default, and the indexers' convention; the last column counts it as present. **Caveat:** the "
            "phrase lists and triggers were written while reading disagreements on these same reports, so "
            "this is agreement on the development set, not an independent validation; MeSH indexing itself "
            "is not a perfect reference (e.g. it records 'calcified aorta' as Calcinosis, which we map to "
            "aortic atherosclerosis).")


def _notes(args: argparse.Namespace, out: dict[str, Any]) -> str:
    parts = []
    iu = out.get("iu")
    if iu:
        meta = iu["model_meta"]
        parts.append(
            f"**IU X-ray (real report text, no images).** R2Gen split: {iu['n_train']} train / {iu['n_test']} test "
            f"reports. Drafter: {meta.get('parameters', 0) / 1e6:.1f} M-parameter Llama trained from scratch "
            f"({meta.get('steps')} steps) with our BPE, conditioned on the gold {args.label_column} labels; training "
            f"{iu['train_seconds']} s wall ({iu['train_cpu_seconds']} s CPU), drafting the test split "
            f"{iu['generate_seconds']} s, greedy decoding. Metrics on the generated FINDINGS vs the reference "
            "findings (R2Gen's target), R2Gen-style tokens (lowercase, words and full stops); METEOR and CIDEr "
            "from pycocoevalcap, ROUGE-L from rouge-score. CE = clinical efficacy: micro P/R/F1 of the finding "
            "labels our extractor reads in the whole draft (findings + impression) vs in the whole reference "
            "report, and vs the report's MeSH labels. **Not a like-for-like comparison with R2Gen**: R2Gen "
            "generates from the X-ray images; we condition on the gold labels, which carry most of the "
            "findings — read our row as an upper bound of a label→text drafter, and the retrieval row as "
            "what the labels alone buy.")
        if args.model is not None:
            parts.append(f"The drafter was trained beforehand (default recipe, {meta.get('threads', '?')} torch "
                         f"thread(s); source: {meta.get('source', '?')}) and passed with `--model`; the training "
                         "times above are those recorded in its folder.")
    sim = out.get("simulated")
    if sim:
        meta = sim["model_meta"]
        enc = meta.get("encoder", "?")
        if isinstance(enc, dict):
            enc = f"{enc.get('source', '?')} (weights SHA-256 {str(enc.get('sha256', ''))[:12]}…)"
        parts.append(
            f"**Simulated image→report ({sim['n']} held-out SIMULATED phantoms, seeds never trained on).** "
            f"Model: {meta.get('task', '?')}; encoder {enc}, trained on "
            f"{meta.get('n_train', '?')} phantoms. Finding-level = the (finding, organ) pairs a draft states "
            "positively vs the phantom's ground truth, micro over cases. Phantom reports come from templates, so "
            "this measures whether the model reads the findings from the volume, not report quality.")
    bounds = []
    if iu and args.epochs is not None:
        bounds.append(f"the IU drafter was trained for {args.epochs:g} epochs instead of the recipe's 10")
    if iu and args.limit_test:
        bounds.append(f"only the first {iu['n_test']} test reports were drafted and scored")
    if bounds:
        parts.append("**Bounded run** (to fit the time available on this CPU): " + "; ".join(bounds)
                     + ". Numbers from a full run may differ.")
    return "\n\n".join(parts)
