"""Clinical efficacy: finding-level precision/recall/F1 between label sets and between reports.

Pure functions on strings and sets; reports are read by :mod:`radfm.metrics.mentions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from radfm.metrics.mentions import finding_labels
from radfm.metrics.vocabulary import CHEST_LABELS, LabelSpec

__all__ = ["clinical_efficacy", "label_prf", "set_prf"]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def label_prf(gold: Sequence[Iterable[str]], pred: Sequence[Iterable[str]],
              labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Finding-level P/R/F1 between label sets, per label, micro and macro.

    Micro counts every (report, label) decision; macro averages the per-label F1 over labels
    with at least one gold positive (a label nobody has cannot be recalled). ``labels``
    restricts the scored labels (default: all seen in either side).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold label sets but {len(pred)} predicted ones.")
    g_sets, p_sets = [set(g) for g in gold], [set(p) for p in pred]
    names = list(labels) if labels is not None else sorted(set().union(*g_sets, *p_sets))
    per: dict[str, dict[str, Any]] = {}
    tp_all = fp_all = fn_all = 0
    for name in names:
        tp = sum(1 for g, p in zip(g_sets, p_sets) if name in g and name in p)
        fp = sum(1 for g, p in zip(g_sets, p_sets) if name not in g and name in p)
        fn = sum(1 for g, p in zip(g_sets, p_sets) if name in g and name not in p)
        per[name] = {**_prf(tp, fp, fn), "support": tp + fn, "predicted": tp + fp}
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    supported = [v["f1"] for v in per.values() if v["support"] > 0]
    macro = {k: sum(v[k] for v in per.values() if v["support"] > 0) / len(supported) if supported else 0.0
             for k in ("precision", "recall", "f1")}
    return {"micro": _prf(tp_all, fp_all, fn_all), "macro": macro, "per_label": per, "n": len(g_sets)}


def clinical_efficacy(
    references: Sequence[str],
    hypotheses: Sequence[str],
    labels: Mapping[str, LabelSpec] = CHEST_LABELS,
    *,
    uncertain: Literal["positive", "negative"] = "negative",
) -> dict[str, Any]:
    """Finding-level P/R/F1 of generated vs reference reports, both read by the same extractor."""
    gold = [finding_labels(r, labels, uncertain=uncertain) for r in references]
    pred = [finding_labels(h, labels, uncertain=uncertain) for h in hypotheses]
    return label_prf(gold, pred, list(labels))


def set_prf(gold: Sequence[set], pred: Sequence[set]) -> dict[str, float]:
    """Micro precision/recall/F1 over the finding sets of many reports (``tp``/``fp``/``fn`` included).

    Unlike :func:`label_prf` the set elements may be anything hashable (e.g. ``(finding, organ)``
    pairs); nothing predicted and nothing to find scores 1.0, not 0.0.
    """
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    fp = sum(len(p - g) for g, p in zip(gold, pred))
    fn = sum(len(g - p) for g, p in zip(gold, pred))
    prec = tp / (tp + fp) if tp + fp else (1.0 if not fn else 0.0)
    rec = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
