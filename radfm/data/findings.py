"""The structured finding shared by report drafting, detection and segmentation.

Why one small frozen type: the report generator, the detection head and the segmentation
evaluation all talk about the same lesion. Keeping its name, organ, size, location, label id
and box together means a report sentence can be traced to the voxels it describes (and a
metric can check that it was right) without re-parsing text.

Coordinates: ``bbox_ijk`` is in canonical (RAS+) voxel indices of the case's own grid,
``(i_min, j_min, k_min, i_max, j_max, k_max)`` with the max *exclusive* (slice convention),
so ``labels[i0:i1, j0:j1, k0:k1]`` is the box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# The closed vocabulary of finding names. The report renderer only uses these, and
# ``radfm.data.report_text.findings_mentioned`` maps text back onto them.
FINDING_TYPES: tuple[str, ...] = (
    "mass",
    "cyst",
    "nodule",
    "hypodense lesion",
    "hyperintense lesion",
    "hypointense lesion",
    "pleural effusion",
    "cardiomegaly",
    "hepatomegaly",
)

# Findings that describe a whole organ's state rather than a focal lesion.
ORGAN_STATE_FINDINGS: frozenset[str] = frozenset({"pleural effusion", "cardiomegaly", "hepatomegaly"})


@dataclass(frozen=True)
class Finding:
    """One abnormality in a study.

    Attributes:
        finding: name from ``FINDING_TYPES`` (e.g. "nodule", "cardiomegaly").
        organ: generic organ name ("lung", "liver", "spleen", "kidney", "heart", "pleura",
            "brain").
        size_mm: focal lesions: maximal 3D diameter in mm; hepatomegaly: craniocaudal span;
            cardiomegaly: transverse diameter; ``None`` when no size applies (effusion).
        location: words, e.g. "right lower lobe", "right hepatic lobe segment VII".
        label_id: id of the voxels in the case's label map, if it has one.
        bbox_ijk: ``(i0, j0, k0, i1, j1, k1)`` canonical voxel box, max exclusive.
    """

    finding: str
    organ: str
    size_mm: float | None
    location: str
    label_id: int | None = None
    bbox_ijk: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        if d["bbox_ijk"] is not None:
            d["bbox_ijk"] = [int(v) for v in d["bbox_ijk"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        known = {"finding", "organ", "size_mm", "location", "label_id", "bbox_ijk"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown Finding keys: {sorted(extra)}")
        bbox = d.get("bbox_ijk")
        size = d.get("size_mm")
        label = d.get("label_id")
        return cls(
            finding=str(d["finding"]),
            organ=str(d["organ"]),
            size_mm=None if size is None else float(size),
            location=str(d.get("location", "")),
            label_id=None if label is None else int(label),
            bbox_ijk=None if bbox is None else tuple(int(v) for v in bbox),
        )


def bbox_of(mask: np.ndarray) -> tuple[int, ...] | None:
    """``(i0, j0, k0, i1, j1, k1)`` (max exclusive) of a boolean 3D mask; ``None`` if empty."""
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    return (*lo, *hi)


def max_diameter_mm(mask: np.ndarray, spacing: tuple[float, float, float] | np.ndarray) -> float:
    """Maximal 3D (Feret) diameter of a mask in mm, edge to edge.

    Why "+ one voxel": radiologists measure from edge to edge, while voxel centres of a
    lesion D voxels across are D-1 apart; adding the mean spacing gives the edge-to-edge
    estimate (a single voxel measures one spacing). Uses the convex hull so large lesions
    stay fast (pairwise distances only between hull vertices).
    """
    idx = np.argwhere(mask)
    if idx.shape[0] == 0:
        return 0.0
    sp = np.asarray(spacing, dtype=np.float64)
    pts = idx * sp
    if pts.shape[0] > 64:
        from scipy.spatial import ConvexHull

        for options in (None, "QJ"):  # "QJ" joggles flat (coplanar) point sets
            try:
                pts = pts[ConvexHull(pts, qhull_options=options).vertices]
                break
            except Exception:
                continue
    if pts.shape[0] > 1:
        from scipy.spatial.distance import pdist

        d = float(pdist(pts).max())
    else:
        d = 0.0
    return d + float(sp.mean())
