"""The vocabularies the mention matcher reads: what a label is, chest findings, IU X-ray MeSH terms.

Why apart from the matcher: a vocabulary is data (phrases per label), the matcher is the
negation/uncertainty logic; the phantom vocabulary (``radfm.data.report_text.PHANTOM_LABELS``)
and ad-hoc ones (a finding given to the report drafter) reuse the same matcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CHEST_LABELS", "IU_MESH_TO_LABEL", "LabelSpec", "labels_from_mesh"]


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
