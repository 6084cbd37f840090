"""Phantom vocabulary: label ids, tissue intensities, lesion contrasts, and the case/lesion records.

Why apart: every other phantom module reads these tables; keeping them in one place keeps
the ids and intensities a single source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from radfm.data.findings import Finding
from radfm.data.report_text import Report
from radfm.io.volume import Volume

TORSO_LABELS: dict[int, str] = {
    0: "background", 1: "body", 2: "right lung", 3: "left lung", 4: "heart", 5: "liver",
    6: "spleen", 7: "right kidney", 8: "left kidney", 9: "spine", 10: "ribs", 11: "pleural effusion",
}
HEAD_LABELS: dict[int, str] = {
    0: "background", 1: "scalp", 2: "skull", 3: "csf", 4: "gray matter", 5: "white matter", 6: "ventricles",
}
ABNORMALITIES: tuple[str, ...] = ("cardiomegaly", "hepatomegaly", "pleural effusion")

# Lesion organ name -> label ids that may host it (torso / head).
_HOSTS: dict[str, tuple[int, ...]] = {
    "lung": (2, 3), "right lung": (2,), "left lung": (3,), "liver": (5,), "spleen": (6,),
    "kidney": (7, 8), "right kidney": (7,), "left kidney": (8,), "brain": (4, 5),
}
_GENERIC_ORGAN = {2: "lung", 3: "lung", 5: "liver", 6: "spleen", 7: "kidney", 8: "kidney"}

# Tissue classes: (CT HU, MR T1-like relative intensity, CT texture HU, MR texture).
_TISSUES: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000.0, 0.0, 0.0, 0.0),
    "fat": (-100.0, 0.95, 8.0, 0.03),
    "muscle": (50.0, 0.35, 6.0, 0.02),
    "soft": (30.0, 0.42, 14.0, 0.04),
    "blood": (40.0, 0.15, 3.0, 0.01),
    "myocardium": (50.0, 0.38, 4.0, 0.02),
    "lung": (-850.0, 0.04, 20.0, 0.01),
    "liver": (60.0, 0.55, 5.0, 0.02),
    "spleen": (48.0, 0.42, 4.0, 0.02),
    "kidney": (32.0, 0.45, 5.0, 0.02),
    "cortical": (950.0, 0.05, 30.0, 0.01),
    "cancellous": (420.0, 0.75, 60.0, 0.05),
    "rib": (750.0, 0.30, 40.0, 0.03),
    "disc": (80.0, 0.30, 5.0, 0.02),
    "csf": (8.0, 0.12, 2.0, 0.01),
    "effusion": (12.0, 0.12, 2.0, 0.01),
    "gm": (40.0, 0.45, 2.0, 0.015),
    "wm": (28.0, 0.68, 2.0, 0.015),
    "skull": (1100.0, 0.05, 40.0, 0.01),
    "diploe": (450.0, 0.65, 60.0, 0.04),
    "scalp": (30.0, 0.80, 10.0, 0.04),
}
_T = {name: i for i, name in enumerate(_TISSUES)}

# Default lesion contrasts: CT additive HU, MR multiplicative (lesion = host * (1 + c)).
_CONTRAST = {
    "CT": {
        ("lung", "nodule"): 880.0, ("lung", "mass"): 880.0,
        ("liver", "hypodense lesion"): -35.0, ("liver", "cyst"): -55.0, ("liver", "mass"): -28.0,
        ("spleen", "hypodense lesion"): -30.0, ("spleen", "cyst"): -40.0,
        ("kidney", "cyst"): -25.0, ("kidney", "mass"): 25.0,
        ("brain", "hypodense lesion"): -16.0, ("brain", "mass"): 20.0,
    },
    "MR": {
        ("lung", "nodule"): 6.0, ("lung", "mass"): 6.0,
        ("liver", "hyperintense lesion"): 0.6, ("liver", "hypointense lesion"): -0.5,
        ("liver", "cyst"): -0.7, ("liver", "mass"): -0.35,
        ("spleen", "hyperintense lesion"): 0.6, ("spleen", "hypointense lesion"): -0.5,
        ("spleen", "cyst"): -0.7,
        ("kidney", "cyst"): -0.7, ("kidney", "mass"): 0.4,
        ("brain", "hyperintense lesion"): 0.5, ("brain", "hypointense lesion"): -0.5, ("brain", "mass"): -0.3,
    },
}


@dataclass(frozen=True)
class LesionSpec:
    """A lesion to place in a phantom.

    Attributes:
        organ: "lung", "right lung", "left lung", "liver", "spleen", "kidney", "right kidney",
            "left kidney" (torso) or "brain" (head).
        diameter_mm: nominal diameter; the shape is a randomly perturbed ellipsoid clipped to
            its organ, and the Finding reports the diameter measured on the label map.
        contrast: CT: HU added to the host organ's mean; MR: relative change of the host
            intensity (lesion = host * (1 + contrast)). ``None``: a typical value for ``kind``.
        center_ijk: canonical voxel index of the centre; ``None``: a random place inside the
            organ that keeps the lesion inside it and away from other lesions.
        kind: finding name ("nodule", "mass", "cyst", "hypodense lesion", "hyperintense
            lesion", "hypointense lesion"); ``None``: chosen from organ, modality, size and sign
            of ``contrast``.
    """

    organ: str
    diameter_mm: float
    contrast: float | None = None
    center_ijk: tuple[int, int, int] | None = None
    kind: str | None = None


@dataclass
class PhantomCase:
    """One SIMULATED study.

    Attributes:
        image: float32 ``(X, Y, Z)`` Volume; CT in HU, MR in arbitrary positive units;
            ``meta["simulated"] = True``.
        labels: uint8 ``(X, Y, Z)`` Volume on the same grid (ids in ``label_names``).
        label_names: id -> name; organs have fixed ids, lesions ids after the organs.
        findings: every lesion and abnormal organ state, linked by ``label_id``.
        report: text rendered from ``findings``; sentence ``finding_index`` indexes them.
        seed: the seed that generated the case.
    """

    image: Volume
    labels: Volume
    label_names: dict[int, str]
    findings: list[Finding]
    report: Report
    seed: int


_ORGAN_TISSUE = {"lung": _T["lung"], "liver": _T["liver"], "spleen": _T["spleen"], "kidney": _T["kidney"]}
