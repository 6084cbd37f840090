"""Clinical efficacy: a rule-based, negation- and uncertainty-aware finding extractor + label F1.

Why rules: BLEU rewards "no pleural effusion" for "pleural effusion"; a clinical score must
know which findings a report *asserts*. The usual labellers (CheXpert/CheXbert, RadGraph)
need downloads or pin old stacks (medspacy: spacy<3.8, numpy<2), so this is a small
NegEx/ConText-style rule set of our own, validated against the human MeSH labels of the real
IU X-ray reports (``radfm bench report`` writes the agreement table).

How a report is read:

1. split into sentences (the scope of every trigger);
2. find the phrases of each label (CheXpert-style lists for chest findings; longest match
   wins, overlapping shorter matches are dropped; some labels need a context word in the same
   sentence, e.g. "degenerative" + a spine word);
3. classify each mention: *uncertain* if an uncertainty trigger precedes it ("possible",
   "may represent", "cannot exclude", "suspicious for" …) or follows it ("… cannot be
   excluded", "… is suspected"); else *negative* if a negation trigger precedes it ("no",
   "without", "negative for", "free of", "resolved" …) or follows it ("… has resolved", "…
   is no longer seen"); else *positive*. Pseudo-triggers ("no change in", "not only") are
   ignored, and a scope ends at "but", "however", "although", "except", "which" and similar;
4. per report and label: positive if any mention is positive, else uncertain, else negative.

``finding_labels(text)`` gives the asserted labels; :func:`clinical_efficacy` the finding-level
precision/recall/F1 (micro over all report×label decisions, macro over labels) between
generated and reference reports. Pure functions on strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHEST_LABELS",
    "IU_MESH_TO_LABEL",
    "LabelSpec",
    "Mention",
    "clinical_efficacy",
    "extract_mentions",
    "finding_labels",
    "label_prf",
    "labels_from_mesh",
    "report_status",
    "split_sentences",
]

Status = Literal["positive", "negative", "uncertain"]


@dataclass(frozen=True)
class LabelSpec:
    """Phrases (regex, matched on lowercase text at word boundaries) and an optional context regex
    that must also occur in the sentence."""

    phrases: tuple[str, ...]
    context: str | None = None


_SIZE = r"(?:mild(?:ly)?|moderate(?:ly)?|marked(?:ly)?|severe(?:ly)?|slight(?:ly)?|minimal(?:ly)?|borderline|stable|persistent)"

#: Chest findings (CheXpert's 13 observations minus "support devices"/"no finding" naming, plus
#: frequent IU X-ray findings). Keys are the label names used everywhere.
CHEST_LABELS: dict[str, LabelSpec] = {
    "cardiomegaly": LabelSpec((
        r"cardiomegaly",
        r"cardiac enlargement",
        rf"enlarge(?:d|ment of the) (?:{_SIZE} )?(?:heart|cardiac silhouette|cardiac shadow|cardiac size|cardiomediastinal silhouette)",
        rf"enlarged (?:{_SIZE} )?(?:heart|cardiac silhouette|cardiac shadow)",
        rf"(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiac size)(?: size)? (?:is |are |appears |remains |is again )?(?:{_SIZE} )?(?:{_SIZE} )?(?:enlarged|prominent|increased)",
    )),
    "pleural effusion": LabelSpec((
        r"pleural effusions?", r"(?<!pericardial )effusions?", r"pleural fluid", r"hydrothorax",
    )),
    "pneumothorax": LabelSpec((r"pneumothora(?:x|ces)",)),
    "atelectasis": LabelSpec((r"atelectas[ie]s", r"atelectatic", r"(?:lobar|segmental|lung) collapse")),
    "consolidation": LabelSpec((r"consolidations?", r"consolidative")),
    "pneumonia": LabelSpec((r"pneumonias?", r"pneumonitis", r"infectious process", r"bronchopneumonia")),
    "edema": LabelSpec((
        r"(?:pulmonary |interstitial |alveolar )?edema", r"(?:pulmonary )?vascular congestion",
        r"pulmonary congestion", r"(?:congestive )?heart failure", r"chf",
    )),
    "opacity": LabelSpec((
        r"opacit(?:y|ies)", r"opacification", r"air ?space (?:disease|opacit(?:y|ies))", r"infiltrates?",
        r"airspace process",
    )),
    "nodule": LabelSpec((r"nodules?", r"nodular (?:opacit(?:y|ies)|density|densities)")),
    "mass": LabelSpec((r"mass(?:es)?(?! effect)",)),
    "emphysema": LabelSpec((r"emphysema(?:tous)?", r"copd", r"chronic obstructive (?:pulmonary|lung) disease")),
    "hyperinflation": LabelSpec((
        r"hyperinflat(?:ed|ion)", r"hyperexpan(?:ded|sion)", r"hyperaerat(?:ed|ion)", r"overinflat(?:ed|ion)",
        r"hyperlucen(?:t|cy)", r"flatten(?:ed|ing) (?:of the )?(?:hemi)?diaphragms?",
    )),
    "hypoinflation": LabelSpec((
        r"low lung volumes?", r"hypoinflat(?:ed|ion)", r"hypoventilat(?:ed|ion)", r"poor (?:inspiration|inspiratory effort)",
        r"shallow inspiration", r"(?:decreased|diminished|reduced) lung volumes?",
    )),
    "fracture": LabelSpec((r"fractures?", r"fractured")),
    "granuloma": LabelSpec((r"granulomas?", r"granulomata", r"granulomatous (?:disease|changes?|process)",
                            r"(?<!non-)(?<!non)calcified (?:lung |pulmonary )?nodules?")),
    "hiatal hernia": LabelSpec((r"hiatal hernia", r"hiatus hernia")),
    "scoliosis": LabelSpec((r"scoliosis", r"scoliotic", r"dextroscoliosis", r"levoscoliosis",
                            r"(?:dextro|levo)?curvature of the (?:thoracic |lumbar )?spine")),
    "spine degeneration": LabelSpec(
        (r"degenerative (?:changes?|disease|disc disease|joint disease)", r"spondylosis", r"osteophytes?",
         r"osteophytosis", r"spondylitic", r"degenerative", r"arthritic changes?", r"arthritis"),
        context=r"\b(?:spine|spinal|vertebra[el]?|thoracic|lumbar|cervical|thoracolumbar|endplates?|discs?|osteophyt\w*|spondylosis)\b",
    ),
    "support device": LabelSpec((
        r"catheters?", r"central (?:venous )?line", r"picc(?: line)?", r"(?:endotracheal|nasogastric|feeding|chest|tracheostomy) tubes?",
        r"pacemaker", r"pacer", r"defibrillator", r"aicd", r"port-?a-?cath", r"(?:infusion |chest )?port",
        r"stents?", r"surgical clips?", r"(?:sternotomy )?wires?", r"sternotomy", r"(?:orthopedic |spinal )?hardware",
        r"(?:medical |implanted |cardiac )?devices?", r"leads?", r"clips?", r"prosthe(?:sis|tic)",
    )),
    "aortic atherosclerosis": LabelSpec((
        r"atherosclero(?:sis|tic)", r"(?:aortic|aorta) (?:arch )?calcifications?",
        r"calcifi(?:ed|cation of the) (?:thoracic )?aort(?:a|ic (?:arch|knob))", r"calcified aortic",
    )),
    "tortuous aorta": LabelSpec(
        (r"tortuous", r"tortuosity", r"ectatic", r"ectasia", r"unfolded", r"unfolding"),
        context=r"\baort(?:a|ic)\b",
    ),
    "scarring": LabelSpec((r"scar(?:s|ring|red)?", r"cicatri(?:x|cial)")),
    "fibrosis": LabelSpec((r"fibrosis", r"fibrotic", r"interstitial lung disease")),
}

#: IU X-ray MeSH main terms (the part before the first "/") -> our label; "Lung/hypoinflation"-style
#: terms whose meaning sits in a modifier are listed with it.
IU_MESH_TO_LABEL: dict[str, str] = {
    "Cardiomegaly": "cardiomegaly",
    "Cardiac Shadow/enlarged": "cardiomegaly",
    "Cardiac Shadow/borderline": "cardiomegaly",
    "Pleural Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Pulmonary Atelectasis": "atelectasis",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Pulmonary Edema": "edema",
    "Pulmonary Congestion": "edema",
    "Opacity": "opacity",
    "Airspace Disease": "opacity",
    "Infiltrate": "opacity",
    "Nodule": "nodule",
    "Mass": "mass",
    "Emphysema": "emphysema",
    "Pulmonary Emphysema": "emphysema",
    "Pulmonary Disease, Chronic Obstructive": "emphysema",
    "Lung/hyperdistention": "hyperinflation",
    "Lung, Hyperlucent": "hyperinflation",
    "Lung/hypoinflation": "hypoinflation",
    "Fractures, Bone": "fracture",
    "Granuloma": "granuloma",
    "Calcified Granuloma": "granuloma",
    "Granulomatous Disease": "granuloma",
    "Hernia, Hiatal": "hiatal hernia",
    "Scoliosis": "scoliosis",
    "Spine/degenerative": "spine degeneration",
    "Thoracic Vertebrae/degenerative": "spine degeneration",
    "Lumbar Vertebrae/degenerative": "spine degeneration",
    "Osteophyte": "spine degeneration",
    "Spondylosis": "spine degeneration",
    "Catheters, Indwelling": "support device",
    "Implanted Medical Device": "support device",
    "Medical Device": "support device",
    "Tube, Inserted": "support device",
    "Stents": "support device",
    "Surgical Instruments": "support device",
    "Pacemaker, Artificial": "support device",
    "Atherosclerosis": "aortic atherosclerosis",
    "Calcinosis/aorta": "aortic atherosclerosis",
    "Aorta/tortuous": "tortuous aorta",
    "Aorta, Thoracic/tortuous": "tortuous aorta",
    "Cicatrix": "scarring",
    "Pulmonary Fibrosis": "fibrosis",
    "Lung Diseases, Interstitial": "fibrosis",
}

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


def _compile(labels: Mapping[str, LabelSpec]) -> list[tuple[str, re.Pattern[str], re.Pattern[str] | None]]:
    out = []
    for name, spec in labels.items():
        alt = "|".join(f"(?:{p})" for p in spec.phrases)
        out.append((name, re.compile(rf"\b(?:{alt})\b"), re.compile(spec.context) if spec.context else None))
    return out


_COMPILED_CACHE: dict[int, list[tuple[str, re.Pattern[str], re.Pattern[str] | None]]] = {}


def _compiled(labels: Mapping[str, LabelSpec]) -> list[tuple[str, re.Pattern[str], re.Pattern[str] | None]]:
    key = id(labels)
    if key not in _COMPILED_CACHE:
        _COMPILED_CACHE[key] = _compile(labels)
    return _COMPILED_CACHE[key]


@dataclass(frozen=True)
class Mention:
    """One label mention: which label, its status, the sentence and the matched phrase."""

    label: str
    status: Status
    sentence: str
    phrase: str


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
    compiled = _compiled(labels)
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
            out.append(Mention(name, _status(s, start, end), sentence, sentence[start:end]))
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


def labels_from_mesh(mesh: str, mapping: Mapping[str, str] = IU_MESH_TO_LABEL) -> set[str]:
    """IU X-ray ``MeSH``/``Problems`` string -> our label set.

    A term matches by its full path prefix (``"Lung/hypoinflation/mild"`` matches
    ``"Lung/hypoinflation"``) or by its main term (``"Opacity/lung/base/left"`` -> ``"Opacity"``).
    """
    out = set()
    for term in (t.strip() for t in (mesh or "").split(";")):
        if not term:
            continue
        parts = [p.strip() for p in term.split("/")]
        for k in range(len(parts), 0, -1):
            key = "/".join(parts[:k])
            if key in mapping:
                out.add(mapping[key])
                break
    return out


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
