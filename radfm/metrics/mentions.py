"""The one negation- and uncertainty-aware finding/mention matcher (NegEx/ConText-style rules).

Why rules: BLEU rewards "no pleural effusion" for "pleural effusion"; a clinical score must
know which findings a report *asserts*. The usual labellers (CheXpert/CheXbert, RadGraph)
need downloads or pin old stacks (medspacy: spacy<3.8, numpy<2), so this is a small rule set
of our own, validated against the human MeSH labels of the real IU X-ray reports
(``radfm bench report`` writes the agreement table). The phantom report contract
(``radfm.data.report_text``) and the report drafter's sentence links read text through it too.

How a text is read:

1. split into sentences (the scope of every trigger);
2. find the phrases of each label of a vocabulary (:class:`~radfm.metrics.vocabulary.LabelSpec`;
   longest match wins, overlapping shorter matches are dropped; some labels need a context word
   in the same sentence, e.g. "degenerative" + a spine word);
3. classify each mention: *uncertain* if an uncertainty trigger precedes it ("possible",
   "may represent", "cannot exclude", "suspicious for" …) or follows it ("… cannot be
   excluded", "… is suspected"); else *negative* if a negation trigger precedes it ("no",
   "without", "negative for", "free of", "resolved" …) or follows it ("… has resolved", "…
   is no longer seen"); else *positive*. Pseudo-triggers ("no change in", "not only") are
   ignored, and a scope ends at "but", "however", "although", "except", "which" and similar;
4. per text and label: positive if any mention is positive, else uncertain, else negative.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from radfm.metrics.vocabulary import CHEST_LABELS, LabelSpec

__all__ = ["Mention", "Status", "extract_mentions", "finding_labels", "report_status", "split_sentences"]

Status = Literal["positive", "negative", "uncertain"]

# --- triggers -------------------------------------------------------------------------------------
_PSEUDO = re.compile(
    r"\b(?:no (?:significant |interval |definite )?(?:change|increase|decrease|worsening)(?: in)?|not only|"
    r"without (?:significant |interval )?change|no longer (?:enlarged|increased) than|not significantly changed|"
    r"gram negative|no further)\b"
)
_PRE_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|possibility of|may (?:be|represent|reflect|indicate)|might (?:be|represent)|"
    r"could (?:be|represent|reflect|indicate)|can(?:not|'t| not) (?:be )?(?:exclude|excluded|rule out|ruled out)|"
    r"not (?:be )?excluded|suspicious (?:for|of)|suspect(?:ed)?|concerning for|concern for|questionable|"
    r"question of|suggest(?:s|ive of|ing)?|probable|probably|likely|versus|vs|differential|equivocal|"
    r"indeterminate|worrisome for|consider(?:ed)?|cannot be differentiated|compatible with|consistent with early)\b"
)
_POST_UNCERTAIN = re.compile(
    r"\b(?:(?:can ?not|could not|can't) be (?:excluded|ruled out|entirely excluded)|is not excluded|"
    r"(?:is|are) (?:possible|suspected|questioned|likely|not entirely excluded)|not (?:entirely )?excluded|"
    r"versus|vs)\b|\?"
)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|clear of|resolution of|resolved|"
    r"removal of|removed|rather than|ruled out|rules out|nor|neither|never|denies|there is no|there are no|"
    r"no evidence of|no signs? of)\b"
)
_POST_NEGATION = re.compile(
    r"\b(?:(?:has|have|had) (?:completely |since |now )?(?:resolved|cleared|disappeared|been removed)|resolved|"
    r"(?:is|are|was|were) (?:no longer|not) (?:seen|present|identified|visualized|visible|evident|appreciated|"
    r"demonstrated|noted)|(?:is|are) (?:absent|gone|removed)|no longer (?:seen|present|visible|evident)|"
    r"not (?:seen|identified|present|visualized|appreciated)|ruled out|excluded)\b"
)
_TERMINATOR = re.compile(
    r"\b(?:but|however|although|though|yet|whereas|while|which|except|aside from|apart from|"
    r"with the exception of|otherwise|and there (?:is|are)|there is|there are)\b|[;:]"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)(?=[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Sentences (lowercased); the full stop of a decimal ("2.3 cm") does not split."""
    return [s.strip().lower() for s in _SENTENCE.split(text or "") if s.strip()]



_Compiled = tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None], ...]


@functools.lru_cache(maxsize=64)
def _compile(items: tuple[tuple[str, LabelSpec], ...]) -> _Compiled:
    """Patterns of a vocabulary, cached by its (hashable, frozen) content, not by object identity."""
    out = []
    for name, spec in items:
        alt = "|".join(f"(?:{p})" for p in spec.phrases)
        out.append((name, re.compile(rf"\b(?:{alt})\b"), re.compile(spec.context) if spec.context else None))
    return tuple(out)


@dataclass(frozen=True)
class Mention:
    """One label mention: which label, its status, the (lowercased) sentence, the matched phrase and
    its ``[start, end)`` offsets in that sentence."""

    label: str
    status: Status
    sentence: str
    phrase: str
    start: int = 0
    end: int = 0

def _mask_pseudo(s: str) -> str:
    """Replace pseudo-triggers by spaces (same length, so offsets stay valid)."""
    return _PSEUDO.sub(lambda m: " " * len(m.group(0)), s)


def _scope_before(s: str, start: int) -> str:
    """Text before a mention back to the last scope terminator."""
    before = s[:start]
    ends = [m.end() for m in _TERMINATOR.finditer(before)]
    return before[ends[-1]:] if ends else before


def _scope_after(s: str, end: int) -> str:
    """Text after a mention up to the next scope terminator."""
    after = s[end:]
    m = _TERMINATOR.search(after)
    return after[: m.start()] if m else after


def _first_negation(text: str, pattern: re.Pattern[str], uncertain: list[re.Match[str]]) -> int | None:
    """Start of the first negation trigger that is not part of an uncertainty trigger ("can not exclude")."""
    for m in pattern.finditer(text):
        if not any(u.start() <= m.start() < u.end() for u in uncertain):
            return m.start()
    return None


def _status(s: str, start: int, end: int) -> Status:
    """Uncertain, negative or positive; a negation *before* the hedge wins ("no opacity to suggest X")."""
    before, after = _scope_before(s, start), _scope_after(s, end)
    unc_pre = list(_PRE_UNCERTAIN.finditer(before))
    neg_pre = _first_negation(before, _PRE_NEGATION, unc_pre)
    if unc_pre:
        return "negative" if neg_pre is not None and neg_pre < unc_pre[0].start() else "uncertain"
    if _POST_UNCERTAIN.search(after):
        return "uncertain"
    if neg_pre is not None or _POST_NEGATION.search(after):
        return "negative"
    return "positive"


def extract_mentions(text: str, labels: Mapping[str, LabelSpec] = CHEST_LABELS) -> list[Mention]:
    """Every label mention in ``text`` with its status (see the module docstring)."""
    out: list[Mention] = []
    compiled = _compile(tuple(labels.items()))
    for sentence in split_sentences(text):
        s = _mask_pseudo(sentence)
        found: list[tuple[int, int, str]] = []
        for name, pattern, context in compiled:
            if context is not None and not context.search(s):
                continue
            found.extend((m.start(), m.end(), name) for m in pattern.finditer(s))
        found.sort(key=lambda m: (m[0], -(m[1] - m[0])))
        taken_until = -1
        for start, end, name in found:
            if start < taken_until:
                continue  # inside a longer match already taken
            taken_until = end
            out.append(Mention(name, _status(s, start, end), sentence, sentence[start:end], start, end))
    return out


def report_status(text: str, labels: Mapping[str, LabelSpec] = CHEST_LABELS) -> dict[str, Status]:
    """Label -> status for one report: positive beats uncertain beats negative; unmentioned: absent."""
    rank = {"negative": 0, "uncertain": 1, "positive": 2}
    out: dict[str, Status] = {}
    for m in extract_mentions(text, labels):
        if m.label not in out or rank[m.status] > rank[out[m.label]]:
            out[m.label] = m.status
    return out


def finding_labels(
    text: str,
    labels: Mapping[str, LabelSpec] = CHEST_LABELS,
    *,
    uncertain: Literal["positive", "negative"] = "negative",
) -> set[str]:
    """Labels the report asserts; hedged mentions count as absent unless ``uncertain="positive"``.

    Why absent by default: it is the usual CheXpert-based convention (only label 1 counts), and it
    agrees better with the IU X-ray MeSH indexers, who do not label hedged findings.
    """
    keep = {"positive", "uncertain"} if uncertain == "positive" else {"positive"}
    return {k for k, v in report_status(text, labels).items() if v in keep}
