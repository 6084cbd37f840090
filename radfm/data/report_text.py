"""Template reports for SIMULATED studies, with every finding sentence linked to its Finding.

Why templates with varied wording: a report-drafting model trained on one phrasing per
finding learns the phrasing, not the image. Several templates per finding and per normal
statement, drawn by a seeded generator, keep the text varied yet reproducible.

The contract that tests and report metrics rely on: a rendered report mentions EXACTLY the
findings it was rendered from. Normal statements may name absent findings only in negated
form ("No pleural effusion."), and ``findings_mentioned`` (the negation-aware matcher of
``radfm.metrics.mentions`` over :data:`PHANTOM_LABELS`) recovers the set of positively mentioned
finding names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radfm.data.findings import Finding
from radfm.metrics.mentions import extract_mentions
from radfm.metrics.vocabulary import LabelSpec

TORSO_ORGANS: tuple[str, ...] = ("lung", "pleura", "heart", "liver", "spleen", "kidney", "bones")
HEAD_ORGANS: tuple[str, ...] = ("brain", "ventricles", "skull")


@dataclass
class ReportSentence:
    """One sentence of a report.

    Attributes:
        text: the sentence.
        section: "findings" or "impression".
        finding_index: index into the findings the report was rendered from (``case.findings``)
            for a sentence about that finding; ``None`` for normal statements.
    """

    text: str
    section: str
    finding_index: int | None = None


@dataclass
class Report:
    """A radiology-style report: FINDINGS and IMPRESSION sections plus the sentence links."""

    findings_text: str
    impression_text: str
    sentences: list[ReportSentence] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The full report as one string, with section headers."""
        return f"FINDINGS: {self.findings_text}\nIMPRESSION: {self.impression_text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings_text": self.findings_text,
            "impression_text": self.impression_text,
            "sentences": [vars(s).copy() for s in self.sentences],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(d["findings_text"], d["impression_text"], [ReportSentence(**s) for s in d["sentences"]])


# --- wording ---------------------------------------------------------------------------

def format_size(size_mm: float) -> str:
    """Sizes as radiologists write them: "8 mm" below 1 cm, else "2.3 cm"."""
    mm = max(1, round(size_mm))
    if mm < 10:
        return f"{mm} mm"
    return f"{round(size_mm / 10.0 + 1e-9, 1):.1f} cm"


def _article(word: str) -> str:
    return "An" if word[:1] == "8" or word.startswith(("11 ", "11.", "18 ", "18.")) else "A"


# Finding sentences. {a} = article for the size, {s} = size, {loc} = location, {w} = the
# modality word ("attenuation"/"signal"). Templates never put a negation cue before the term.
_FOCAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "nodule": (
        "{a} {s} nodule in the {loc}.",
        "There is {al} {s} solid nodule in the {loc}.",
        "{s} pulmonary nodule in the {loc}.",
        "{a} {s} well-defined nodule is seen in the {loc}.",
    ),
    "mass": (
        "{a} {s} mass in the {loc}.",
        "There is {al} {s} mass in the {loc}.",
        "{a} {s} heterogeneous mass is present in the {loc}.",
        "{s} soft-tissue mass in the {loc}.",
    ),
    "cyst": (
        "{a} {s} simple cyst in the {loc}.",
        "There is {al} {s} cyst in the {loc}.",
        "{a} {s} well-circumscribed cyst is seen in the {loc}.",
        "{s} fluid-density cyst in the {loc}.",
    ),
    "hypodense lesion": (
        "{a} {s} hypodense lesion in the {loc}.",
        "There is {al} {s} hypodense lesion in the {loc}.",
        "{a} {s} ill-defined hypodense lesion is seen in the {loc}.",
        "{s} hypodense lesion in the {loc}.",
    ),
    "hyperintense lesion": (
        "{a} {s} hyperintense lesion in the {loc}.",
        "There is {al} {s} T1-hyperintense lesion in the {loc}.",
        "{a} {s} hyperintense lesion is seen in the {loc}.",
        "{s} hyperintense lesion in the {loc}.",
    ),
    "hypointense lesion": (
        "{a} {s} hypointense lesion in the {loc}.",
        "There is {al} {s} T1-hypointense lesion in the {loc}.",
        "{a} {s} hypointense lesion is seen in the {loc}.",
        "{s} hypointense lesion in the {loc}.",
    ),
}
_FOCAL_IMPRESSION: tuple[str, ...] = (
    "{S} {name} in the {loc}.",
    "{Name} in the {loc}, measuring {s}.",
    "{Name} in the {loc} ({s}).",
)
_STATE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "Cardiomegaly.",
        "The heart is enlarged, with a transverse diameter of {s}.",
        "Enlarged heart (transverse diameter {s}).",
        "Cardiomegaly, transverse cardiac diameter {s}.",
    ),
    "hepatomegaly": (
        "Hepatomegaly, with a craniocaudal span of {s}.",
        "The liver is enlarged, measuring {s} craniocaudally.",
        "Enlarged liver, craniocaudal span {s}.",
        "Hepatomegaly.",
    ),
    "pleural effusion": (
        "{Side} pleural {effusion}.",
        "{there} {side_a} {side} pleural {effusion}.",
        "{Side} pleural {effusion} with adjacent compressive atelectasis.",
        "Dependent {side} pleural {effusion}.",
    ),
}
_STATE_IMPRESSION: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
    "hepatomegaly": ("Hepatomegaly.", "Enlarged liver."),
    "pleural effusion": ("{Side} pleural {effusion}.",),
}
_NORMAL: dict[str, tuple[str, ...]] = {
    "lung": (
        "The lungs are clear.",
        "No suspicious pulmonary nodule or mass.",
        "Clear lungs without focal consolidation.",
        "The lungs are clear without nodules.",
    ),
    "pleura": ("No pleural effusion.", "No pleural effusion or pneumothorax.", "The pleural spaces are clear."),
    "heart": ("The heart is normal in size.", "Normal heart size.", "No cardiomegaly.",
              "Heart size is within normal limits."),
    "liver": ("The liver is normal in size and {w}.", "Unremarkable liver.", "No focal liver lesion.",
              "No hepatomegaly or focal liver lesion."),
    "spleen": ("The spleen is unremarkable.", "Normal spleen.", "The spleen is normal in size and {w}."),
    "kidney": ("The kidneys are unremarkable.", "Both kidneys are normal in size without hydronephrosis.",
               "No renal mass or cyst."),
    "bones": ("No aggressive osseous lesion.", "The osseous structures are unremarkable.",
              "No suspicious bone lesion."),
    "brain": ("The brain parenchyma is normal in {w}.", "No intracranial mass.",
              "No focal parenchymal abnormality. No midline shift or mass effect."),
    "ventricles": ("The ventricles are normal in size.", "Normal ventricular size and configuration."),
    "skull": ("The calvarium is intact.", "No calvarial lesion."),
}
_NORMAL_IMPRESSION: tuple[str, ...] = ("No acute abnormality.", "Normal examination.",
                                       "No significant abnormality.")
_OTHERWISE: tuple[str, ...] = ("No other acute abnormality.", "Otherwise unremarkable examination.")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _state_fields(f: Finding) -> dict[str, str]:
    side = f.location.split()[0] if f.location else "bilateral"
    bilateral = side == "bilateral"
    return {
        "side": side,
        "Side": _cap(side),
        "side_a": "a" if not bilateral else "",
        "there": "There are" if bilateral else "There is",
        "effusion": "effusions" if bilateral else "effusion",
        "s": format_size(f.size_mm) if f.size_mm else "",
    }


def _finding_sentence(f: Finding, rng: np.random.Generator, impression: bool) -> str:
    if f.finding in _STATE_TEMPLATES:
        fields = _state_fields(f)
        table = _STATE_IMPRESSION if impression else _STATE_TEMPLATES
        options = [t for t in table[f.finding] if "{s}" not in t or fields["s"]]
        return re.sub(r"\s+", " ", _pick(rng, options).format(**fields))
    if f.finding not in _FOCAL_TEMPLATES:
        raise ValueError(f"no report template for finding {f.finding!r}")
    s = format_size(f.size_mm) if f.size_mm else "small"
    fields = {"s": s, "S": _cap(s), "a": _article(s), "al": _article(s).lower(), "loc": f.location,
              "name": f.finding, "Name": _cap(f.finding)}
    return _pick(rng, _FOCAL_IMPRESSION if impression else _FOCAL_TEMPLATES[f.finding]).format(**fields)


def render_report(
    findings: Sequence[Finding],
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    organs_examined: Sequence[str] = TORSO_ORGANS,
    modality: str = "CT",
) -> Report:
    """Render FINDINGS and IMPRESSION text for a list of findings.

    Args:
        findings: the study's findings; sentence ``finding_index`` values index this list.
        rng / seed: wording choices come only from this generator (``rng`` wins; otherwise
            ``np.random.default_rng(seed)``), so the same input gives the same text.
        organs_examined: organs that get a normal statement when they have no finding, in
            report order (``TORSO_ORGANS`` or ``HEAD_ORGANS``). Findings in other organs are
            reported after them.
        modality: "CT" says "attenuation", anything else "signal intensity".
    """
    if rng is None:
        rng = np.random.default_rng(seed)
    w = "attenuation" if modality.upper() == "CT" else "signal intensity"
    by_organ: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        by_organ.setdefault(f.organ, []).append(i)
    order = list(organs_examined) + sorted(o for o in by_organ if o not in organs_examined)

    sentences: list[ReportSentence] = []
    for organ in order:
        if organ in by_organ:
            for i in by_organ[organ]:
                sentences.append(ReportSentence(_finding_sentence(findings[i], rng, False), "findings", i))
        elif organ in _NORMAL:
            sentences.append(ReportSentence(_pick(rng, _NORMAL[organ]).format(w=w), "findings", None))

    indices = [i for organ in order for i in by_organ.get(organ, [])]
    if not indices:
        sentences.append(ReportSentence(_pick(rng, _NORMAL_IMPRESSION), "impression", None))
    else:
        for i in indices:
            sentences.append(ReportSentence(_finding_sentence(findings[i], rng, True), "impression", i))
        if rng.random() < 0.5:
            sentences.append(ReportSentence(_pick(rng, _OTHERWISE), "impression", None))

    findings_text = " ".join(s.text for s in sentences if s.section == "findings")
    impression_text = " ".join(s.text for s in sentences if s.section == "impression")
    return Report(findings_text, impression_text, sentences)


# --- reading text back -----------------------------------------------------------------

#: The phantom vocabulary (``FINDING_TYPES`` and the synonyms the templates use), read by the one
#: mention matcher ``radfm.metrics.mentions``.
PHANTOM_LABELS: dict[str, LabelSpec] = {
    "pleural effusion": LabelSpec((r"pleural effusions?", r"effusions?")),
    "cardiomegaly": LabelSpec((r"cardiomegaly", r"heart is enlarged", r"enlarged (?:heart|cardiac silhouette)")),
    "hepatomegaly": LabelSpec((r"hepatomegaly", r"liver is enlarged", r"enlarged liver")),
    "hypodense lesion": LabelSpec((r"(?:hypodense|hypoattenuating|low-attenuation) (?:[a-z-]+ )?lesions?",)),
    "hyperintense lesion": LabelSpec((r"hyperintense (?:[a-z-]+ )?lesions?",)),
    "hypointense lesion": LabelSpec((r"hypointense (?:[a-z-]+ )?lesions?",)),
    "cyst": LabelSpec((r"cystic lesions?", r"cysts?")),
    "nodule": LabelSpec((r"nodules?",)),
    "mass": LabelSpec((r"mass(?:es)?(?! effect)",)),
}


def findings_mentioned(report_text: str) -> set[str]:
    """Finding names (from ``FINDING_TYPES``) that the text mentions positively.

    :func:`radfm.metrics.extract_mentions` over :data:`PHANTOM_LABELS`: longest match wins
    (synonyms such as "enlarged liver" map to "hepatomegaly"); negated ("No pleural effusion.")
    and hedged ("possible nodule") mentions do not count. Good enough for template text; not a
    clinical labeller.
    """
    return {m.label for m in extract_mentions(report_text, PHANTOM_LABELS) if m.status == "positive"}
