"""``radfm report`` (draft a report) and ``radfm train report`` (train a report model).

Thin wrappers over :class:`radfm.tasks.report.drafting.ReportDrafter` (in-process transformers),
:func:`radfm.tasks.report.text_drafter.train_text_drafter` and
:func:`radfm.tasks.report.phantom_recipe.train_phantom_report_model`.

``train`` is shared by tasks: whichever task registers first creates ``radfm train`` with a
sub-command group, later ones add their sub-command to it (:func:`radfm.training.cli.train_subparsers`). Recipes
are the dataclasses of those modules; ``-c recipe.yaml`` and dotted overrides
(``optim.lr=1e-3``) change them, strictly (an unknown key is an error).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from radfm.argtypes import positive_float, positive_int
from radfm.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["register"]


def _recipe(cls: type, default: Any, path: str | None, overrides: list[str]) -> Any:
    """``default`` updated by a YAML recipe and ``key.sub=value`` overrides, rebuilt strictly."""
    import yaml

    from radfm.config import from_dict, to_dict

    data = to_dict(default)
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} does not exist.")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {p} must hold a mapping.")
        _merge(data, loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value.")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return from_dict(cls, data)


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _parse_findings(args: argparse.Namespace) -> list[Any] | None:
    """``--findings-json FILE`` (a JSON list) or ``--findings TEXT``, read by the one findings parser."""
    from radfm.tasks.report.prompting import parse_findings

    if args.findings_json:
        try:
            data = json.loads(Path(args.findings_json).read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{args.findings_json} is not valid JSON: {exc.msg}.") from exc
        if not isinstance(data, list):
            raise InputError(f"{args.findings_json} must hold a JSON list of findings.")
        return parse_findings(data)
    return parse_findings(args.findings)


def cmd_report(args: argparse.Namespace) -> int:
    """Draft a report from an image and/or findings; print it (or JSON)."""
    from radfm.check import require_valid
    from radfm.tasks.report.drafting import ReportDrafter

    _threads(args.threads)
    findings = _parse_findings(args)
    volume = None
    if args.image:
        from radfm.io import load_volume

        volume = load_volume(args.image, modality=args.modality)
        require_valid(volume, modality=args.modality)
    if volume is None and findings is None:
        raise InputError("nothing to draft from.", "Give an IMAGE, --findings \"A; B\", or both.")
    drafter = ReportDrafter(args.model)  # in-process transformers on the model's own LLM
    if volume is None and drafter.model.kind == "vlm" and args.model is None:
        log.info("drafting from findings with the starter image→report model (phantom vocabulary)")
    try:
        draft = drafter.draft(volume, findings, max_new_tokens=args.max_new_tokens)
    finally:
        drafter.close()
    d = draft.to_dict()
    if args.deidentify and not args.dicom_sr:
        raise InputError("--deidentify applies to the DICOM SR output.", "Add --dicom-sr OUT.dcm.")
    if args.dicom_sr:
        from radfm.tasks.report.dicom_sr import write_report_sr

        if volume is None:
            raise InputError("--dicom-sr needs the DICOM series the report is about.", "Give IMAGE (a DICOM folder).")
        d["dicom_sr"] = str(write_report_sr(draft, volume, args.dicom_sr, deidentify=args.deidentify))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(f"*** {draft.disclaimer} ***")
        print(f"FINDINGS: {draft.findings_text}")
        print(f"IMPRESSION: {draft.impression_text}")
    return 0


def cmd_train_report(args: argparse.Namespace) -> int:
    """Train the text drafter (--reports CSV) or the phantom image→report model (--phantoms N)."""
    _threads(args.threads)
    if (args.reports is None) == (args.phantoms is None):
        raise InputError("choose what to train on.", "Give --reports CSV (text drafter) or --phantoms N.")
    if args.reports is not None:
        from radfm.tasks.report.text_drafter import TextDrafterConfig, read_report_csv, train_text_drafter

        if not args.label_column or not args.text_column:
            raise InputError("--reports needs --label-column and --text-column.",
                             "IU X-ray: --label-column Problems --text-column findings.")
        cfg = _recipe(TextDrafterConfig, TextDrafterConfig(), args.config, args.overrides)
        if args.epochs is not None:
            cfg.epochs = args.epochs
        records = read_report_csv(args.reports, label_column=args.label_column, text_column=args.text_column,
                                  impression_column=args.impression_column or _auto_impression(args))
        rm = train_text_drafter(records, args.out, cfg, progress=not args.no_progress, source=Path(args.reports).name)
    else:
        from radfm.tasks.report.phantom_recipe import PhantomReportConfig, train_phantom_report_model

        cfg = _recipe(PhantomReportConfig, PhantomReportConfig(n_train=args.phantoms), args.config, args.overrides)
        rm = train_phantom_report_model(cfg, args.out, progress=not args.no_progress)
    print(json.dumps({"out": str(args.out), "kind": rm.kind, **{k: rm.meta[k] for k in ("train_seconds", "final_loss")
                                                                 if k in rm.meta}}, indent=2))
    return 0


def _auto_impression(args: argparse.Namespace) -> str | None:
    """Use an ``impression`` column when the CSV has one and the text column is another."""
    import csv

    with open(args.reports, newline="", encoding="utf-8") as fh:
        cols = next(csv.reader(fh), [])
    return "impression" if "impression" in cols and args.text_column != "impression" else None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radfm report`` and ``radfm train report``."""
    p = subparsers.add_parser(
        "report", help="draft a radiology report (image and/or findings) — a DRAFT for review",
        description="Draft FINDINGS and IMPRESSION from an image (NIfTI, DICOM folder …), from findings "
        "(\"Cardiomegaly; Opacity/lung/base/left\"), or both. The output is a draft for review by a "
        "radiologist. Default model: the starter image→report model, trained on SIMULATED phantoms only.")
    p.add_argument("image", nargs="?", help="image to report on (optional with --findings)")
    p.add_argument("--model", help="report model folder (default: the shipped starter model)")
    p.add_argument("--findings", help="';'-separated findings/labels, e.g. \"Cardiomegaly; Opacity/lung/base/left\"")
    p.add_argument("--findings-json", help="JSON file with a list of findings (Finding dicts or strings)")
    p.add_argument("--modality", choices=["CT", "MR"], help="declare the image's modality")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, help="at most this many tokens (default 200)")
    p.add_argument("--threads", type=positive_int, help="torch threads")
    p.add_argument("--json", action="store_true", help="print JSON (findings, impression, sentences with links)")
    p.add_argument("--dicom-sr", help="also write the draft as a DICOM SR (partial, unverified) for a DICOM series")
    p.add_argument("--deidentify", action="store_true",
                   help="with --dicom-sr: apply PS3.15 Annex E basic profile (no patient names, IDs, dates or "
                        "private tags in the SR; UIDs replaced consistently)")
    p.set_defaults(func=cmd_report)

    from radfm.training.cli import train_subparsers

    train = train_subparsers(subparsers)
    t = train.add_parser(
        "report", help="train a report model (text drafter from a CSV, or image→report on phantoms)",
        description="--reports CSV: train a findings→report text drafter from reports whose label column holds "
        "';'-separated findings (IU X-ray: --label-column Problems --text-column findings). --phantoms N: "
        "train the image→report model on N SIMULATED phantoms. Recipe changes: -c recipe.yaml and key=value.")
    t.add_argument("--reports", help="CSV of reports")
    t.add_argument("--label-column", help="column with ';'-separated findings/labels")
    t.add_argument("--text-column", help="column with the report text (FINDINGS section)")
    t.add_argument("--impression-column", help="column with the IMPRESSION (default: 'impression' if present)")
    t.add_argument("--phantoms", type=positive_int, help="train the image→report model on this many phantoms")
    t.add_argument("--out", required=True, help="output model folder")
    t.add_argument("--epochs", type=positive_float, help="text drafter: passes over the reports (default 10)")
    t.add_argument("-c", "--config", help="YAML recipe (TextDrafterConfig / PhantomReportConfig fields)")
    t.add_argument("--threads", type=positive_int, help="torch threads")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", help="recipe overrides key.sub=value (e.g. optim.lr=1e-3)")
    t.set_defaults(func=cmd_train_report)

