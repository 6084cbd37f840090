"""Natural-language report metrics that run offline: BLEU-1..4, ROUGE-L, METEOR, CIDEr.

Why these four and these implementations: they are what report-generation papers (R2Gen and
its successors) publish, so our numbers can stand beside theirs, and each has an
implementation that needs no download (Hugging Face ``evaluate`` fetches scripts from the hub
and fails offline here):

- BLEU-1..4: ``nltk.translate.bleu_score.corpus_bleu`` (corpus level, no smoothing — as
  pycocoevalcap's BLEU) on our regex tokens;
- ROUGE-L: ``rouge_score.RougeScorer(["rougeL"], use_stemmer=True)`` F-measure, mean over
  reports (not ``split_summaries``, which needs NLTK's punkt data);
- METEOR: ``pycocoevalcap.meteor.Meteor`` (Java 17 and the jar + WordNet data inside the
  wheel); without Java it is skipped and the result says why;
- CIDEr: ``pycocoevalcap.cider.Cider`` over the whole set (document frequencies come from the
  references of the set itself, so it is not defined per report).

Tokenisation (R2Gen-style): lowercase, keep words/numbers and the full stop, drop other
punctuation. pycocoevalcap's ``PTBTokenizer`` is avoided (it writes temp files into its own
package folder); the same tokens feed every metric except ROUGE-L, which tokenises itself.
These are pure functions on lists of strings.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from typing import Any

__all__ = ["bleu", "cider", "meteor", "report_generation_metrics", "rouge_l", "tokenize"]

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"[a-z0-9]+|\.")


def tokenize(text: str) -> list[str]:
    """Lowercase words/numbers and full stops: ``"No effusion, 2.3 cm."`` -> ``no effusion 2 . 3 cm .``."""
    return _TOKEN.findall((text or "").lower())


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses.")
    if not references:
        raise ValueError("no reports to score.")


def bleu(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (one reference per report). Returns ``{"bleu1": …, …, "bleu4": …}``."""
    from nltk.translate.bleu_score import corpus_bleu

    _check(references, hypotheses)
    refs = [[tokenize(r)] for r in references]
    hyps = [tokenize(h) for h in hypotheses]
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    scores = corpus_bleu(refs, hyps, weights=weights)
    return {f"bleu{n}": float(s) for n, s in enumerate(scores, start=1)}


def rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over reports (Porter stemming)."""
    from rouge_score import rouge_scorer

    _check(references, hypotheses)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    vals = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses)]
    return float(sum(vals) / len(vals))


def _coco_inputs(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[dict, dict]:
    # An empty hypothesis breaks METEOR's Java side; one dot keeps the line and scores ~0.
    gts = {i: [" ".join(tokenize(r)) or "."] for i, r in enumerate(references)}
    res = {i: [" ".join(tokenize(h)) or "."] for i, h in enumerate(hypotheses)}
    return gts, res


def meteor(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """Corpus METEOR (pycocoevalcap, Java); ``None`` when no ``java`` is on the PATH (logged)."""
    _check(references, hypotheses)
    if shutil.which("java") is None:
        log.warning("METEOR skipped: no 'java' on the PATH (pycocoevalcap's METEOR runs a Java jar).")
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res = _coco_inputs(references, hypotheses)
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:  # stop the Java process now rather than whenever the wrapper is garbage-collected
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def cider(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """CIDEr-D-style corpus score of pycocoevalcap (IDF from this set's references)."""
    from pycocoevalcap.cider.cider import Cider

    _check(references, hypotheses)
    gts, res = _coco_inputs(references, hypotheses)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def report_generation_metrics(
    references: Sequence[str], hypotheses: Sequence[str], *, with_meteor: bool = True
) -> dict[str, Any]:
    """All four metrics: ``bleu1..bleu4``, ``rouge_l``, ``meteor`` (or ``None`` + ``notes``), ``cider``, ``n``."""
    out: dict[str, Any] = {**bleu(references, hypotheses), "rouge_l": rouge_l(references, hypotheses)}
    notes = []
    out["meteor"] = meteor(references, hypotheses) if with_meteor else None
    if out["meteor"] is None:
        notes.append("METEOR skipped (no Java)" if with_meteor else "METEOR not requested")
    out["cider"] = cider(references, hypotheses)
    out["n"] = len(references)
    if notes:
        out["notes"] = notes
    return out
