"""Phantom findings: sizes, boxes and locations measured on the final (or deformed) label map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from radfm.data.findings import ORGAN_STATE_FINDINGS, Finding, bbox_of, max_diameter_mm
from radfm.data.phantom.canvas import _Grid
from radfm.data.phantom.lesions import _location, _Placed


def _state_size(name: str, box: tuple[int, ...], spacing: np.ndarray) -> float | None:
    """Organ-state size: cardiomegaly transverse (x) diameter, hepatomegaly craniocaudal (z) span."""
    if name == "cardiomegaly":
        return round((box[3] - box[0]) * float(spacing[0]), 1)
    if name == "hepatomegaly":
        return round((box[5] - box[2]) * float(spacing[2]), 1)
    return None


def remeasure_findings(findings: Sequence[Finding], labels: np.ndarray,
                       spacing: Sequence[float]) -> list[Finding]:
    """The same findings with sizes and boxes measured again on a new label map.

    Why: after a deformation (registration pairs, spatial augmentation) lesions change size
    and place; names and location words stay. Findings whose label vanished are dropped.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    out: list[Finding] = []
    for f in findings:
        if f.label_id is None:
            out.append(f)
            continue
        box = bbox_of(labels == f.label_id)
        if box is None:
            continue
        if f.finding in ORGAN_STATE_FINDINGS:
            size = _state_size(f.finding, box, sp)
        else:
            sub = labels[box[0]:box[3], box[1]:box[4], box[2]:box[5]] == f.label_id
            size = round(max_diameter_mm(sub, sp), 1)
        out.append(replace(f, size_mm=size, bbox_ijk=box))
    return out


def _findings(labels: np.ndarray, placed: list[_Placed],
              abnormal: set[str], info: dict[str, object], body: str, g: _Grid) -> list[Finding]:
    """Findings measured on the final label map (sizes, boxes, locations)."""
    findings: list[Finding] = []
    host_boxes: dict[int, tuple[int, ...] | None] = {}

    def host_box(label: int) -> tuple[int, ...] | None:
        if label not in host_boxes:
            if body == "head":
                host_boxes[label] = bbox_of((labels == 4) | (labels == 5))
            else:
                host_boxes[label] = bbox_of(labels == label)
        return host_boxes[label]

    for p in placed:
        box = bbox_of(labels == p.label_id)
        if box is None:
            continue
        sub = labels[box[0]:box[3], box[1]:box[4], box[2]:box[5]] == p.label_id
        centroid = np.argwhere(sub).mean(axis=0) + np.asarray(box[:3])
        hb = host_box(p.host)
        loc = _location(p.host, body, centroid, hb) if hb is not None else "unspecified location"
        findings.append(Finding(p.kind, p.organ, p.size_mm, loc, p.label_id, box))

    for name, label in (("cardiomegaly", 4), ("hepatomegaly", 5)):
        if name in abnormal:
            box = bbox_of(labels == label)
            if box is not None:
                organ = "heart" if label == 4 else "liver"
                findings.append(Finding(name, organ, _state_size(name, box, g.spacing), organ, label, box))
    if "pleural effusion" in abnormal:
        box = bbox_of(labels == 11)
        if box is not None and "effusion_side" in info:
            findings.append(Finding("pleural effusion", "pleura", None, str(info["effusion_side"]), 11, box))
    return findings
