"""BLEU, ROUGE-L, METEOR and CIDEr on hand cases."""

from __future__ import annotations

import math
import shutil

import pytest

from radfm.metrics.nlg import bleu, cider, meteor, report_generation_metrics, rouge_l, tokenize

REFS = ["The heart is normal in size. No pleural effusion.", "Mild cardiomegaly. The lungs are clear."]


def test_tokenizer_is_r2gen_style() -> None:
    assert tokenize("No effusion, 2.3 cm; XXXX.") == ["no", "effusion", "2", ".", "3", "cm", "xxxx", "."]


def test_identical_texts_score_one() -> None:
    b = bleu(REFS, REFS)
    assert all(v == pytest.approx(1.0) for v in b.values())
    assert rouge_l(REFS, REFS) == pytest.approx(1.0)
    assert cider(REFS, REFS) > 1.0  # CIDEr-D is scaled by 10; identical sets score high


@pytest.mark.filterwarnings("ignore::UserWarning")  # nltk: no 3-gram overlap (expected here)
def test_known_bleu_and_rouge_values() -> None:
    # Hypothesis "the heart ." vs reference "the heart is normal .": 3/3 unigrams match, 1/2 bigrams
    # ("heart ." is not in the reference), brevity penalty exp(1 - 5/3).
    b = bleu(["the heart is normal ."], ["the heart ."])
    bp = math.exp(1 - 5 / 3)
    assert b["bleu1"] == pytest.approx(bp * 1.0)
    assert b["bleu2"] == pytest.approx(bp * math.sqrt(1.0 * 1 / 2))
    # ROUGE-L F: LCS "the heart" of lengths 4 (rouge_score drops the full stop) and 2 → P 1, R 0.5.
    assert rouge_l(["the heart is normal."], ["the heart."]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    with pytest.raises(ValueError):
        bleu(["a"], ["a", "b"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_and_the_full_set() -> None:
    """One METEOR call (it starts a JVM that loads WordNet: seconds, more on a busy machine)."""
    m = report_generation_metrics([*REFS, *REFS], [*REFS, "The heart is normal.", "Cardiomegaly."])
    # Two exact copies and two short partial matches: METEOR pools the fragmentation statistics over
    # the corpus, so the score sits well between the two halves (0.43 measured), not near 1.
    assert 0.3 < m["meteor"] < 0.9 and 0 < m["bleu1"] < 1 and m["n"] == 4 and "notes" not in m
    assert meteor.__name__ == "meteor"
