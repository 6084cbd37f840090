"""SIMULATED CT-like and MR-like 3D phantoms with exact labels, findings and reports.

Everything here is synthetic: geometric shapes with CT-like Hounsfield units or T1-like
relative MR intensities. Nothing comes from a patient. The phantoms exist so that every
task (prompt segmentation, detection, registration, report drafting) can be trained and
tested end to end on a machine without real data, with ground truth known exactly.

Why this design:
- Deterministic: one ``np.random.default_rng(seed)`` is split into independent streams
  (anatomy, lesions, noise, wording), so the same seed gives bit-identical image, labels,
  findings and report, and changing the lesions leaves the anatomy unchanged.
- Fast: shapes are evaluated in their bounding boxes only, smooth random fields are made
  by separable upsampling of a coarse grid (a few matrix products), so a 96³ case takes
  well under a second on two CPU cores.
- Anatomy is defined in coordinates normalised to the field of view (each axis [-1, 1]),
  so any shape/spacing shows the whole torso or head. Millimetre sizes (lesion diameters,
  findings) are measured on the grid, so they are self-consistent, but a small field of
  view gives a child-sized body.

Geometry: arrays are canonical RAS+ ``(X, Y, Z)``: axis 0 increases towards patient Right,
axis 1 towards Anterior, axis 2 towards Superior; the affine is diagonal (spacing) with the
volume centred on world (0, 0, 0) mm.

Label maps (fixed ids across cases; see ``TORSO_LABELS`` / ``HEAD_LABELS``): 0 background
(air), organs 1..N, and each lesion its own id N+1, N+2, ... (named "lesion 1", ...), so a
segmentation prompt can target one lesion and a Finding points at its voxels via
``label_id``. The organ-state label "pleural effusion" (torso) may be absent from a case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import ndimage

from radfm.data.findings import ORGAN_STATE_FINDINGS, Finding, bbox_of, max_diameter_mm
from radfm.data.report_text import HEAD_ORGANS, TORSO_ORGANS, Report, render_report
from radfm.errors import InputError
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


# --- smooth random fields --------------------------------------------------------------

def _upsample_matrix(n: int, step: float) -> np.ndarray:
    """(n, m) Gaussian-RBF weights from m control points spaced ``step`` voxels apart."""
    step = max(float(step), 1.0)
    m = int(np.ceil((n - 1) / step)) + 3
    centers = (np.arange(m) - 1.0) * step - ((m - 3) * step - (n - 1)) / 2.0
    d = (np.arange(n)[:, None] - centers[None, :]) / (0.75 * step)
    return np.exp(-0.5 * d * d).astype(np.float32)


def smooth_noise(shape: Sequence[int], step_vox: float | Sequence[float], rng: np.random.Generator,
                 channels: int = 1) -> np.ndarray:
    """Smooth Gaussian random fields, ``(channels, *shape)`` float32 with unit std each.

    Why separable RBF upsampling of a coarse random grid: it is infinitely smooth (no
    interpolation kinks in textures or deformations) and costs three small matrix
    products per channel instead of a 3D convolution. ``step_vox`` (per axis) is the
    control-point spacing in voxels, i.e. the correlation length.
    """
    steps = np.broadcast_to(np.asarray(step_vox, dtype=np.float64), (3,))
    wx, wy, wz = (_upsample_matrix(int(n), s) for n, s in zip(shape, steps))
    out = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        coarse = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1]), dtype=np.float32)
        t = coarse @ wz.T  # (mx, my, Z)
        t = np.matmul(wy, t)  # (mx, Y, Z)
        f = (wx @ t.reshape(wx.shape[1], -1)).reshape(shape)
        f -= f.mean()
        f /= max(float(f.std()), 1e-6)
        out[c] = f
    return out


# --- geometry helpers ------------------------------------------------------------------

def _rotation(rz: float, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    cz, sz, cy, sy, cx, sx = np.cos(rz), np.sin(rz), np.cos(ry), np.sin(ry), np.cos(rx), np.sin(rx)
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return mz @ my @ mx


class _Grid:
    """Normalised coordinates u in [-1, 1] per axis (1D vectors, broadcast on demand)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.half_mm = np.asarray(shape) * self.spacing / 2.0  # mm per normalised unit
        self.u = [((np.arange(n) + 0.5) / n * 2.0 - 1.0).astype(np.float32) for n in shape]

    def to_index(self, u: float, axis: int) -> float:
        return (u + 1.0) * self.shape[axis] / 2.0 - 0.5

    def vox_to_u(self, vox: float, axis: int) -> float:
        """Length of ``vox`` voxels along ``axis`` in normalised units."""
        return 2.0 * vox / self.shape[axis]

    def mm_to_u(self, mm: float, axis: int) -> float:
        return mm / self.half_mm[axis]

    def box(self, center: Sequence[float], extent: Sequence[float]) -> tuple[slice, ...] | None:
        sl = []
        for a in range(3):
            lo = int(np.floor(self.to_index(center[a] - extent[a], a)))
            hi = int(np.ceil(self.to_index(center[a] + extent[a], a))) + 1
            lo, hi = max(lo, 0), min(hi, self.shape[a])
            if hi <= lo:
                return None
            sl.append(slice(lo, hi))
        return tuple(sl)

    def local(self, sl: tuple[slice, ...], center: Sequence[float],
              rot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates relative to ``center`` in the box, rotated into the shape's frame."""
        x = (self.u[0][sl[0]] - center[0])[:, None, None]
        y = (self.u[1][sl[1]] - center[1])[None, :, None]
        z = (self.u[2][sl[2]] - center[2])[None, None, :]
        if rot is None:
            return x, y, z
        r = rot.T.astype(np.float32)  # world -> local
        return (r[0, 0] * x + r[0, 1] * y + r[0, 2] * z,
                r[1, 0] * x + r[1, 1] * y + r[1, 2] * z,
                r[2, 0] * x + r[2, 1] * y + r[2, 2] * z)


@dataclass
class _Ellipsoid:
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray

    def rho(self, g: _Grid, pad: float = 1.15) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
        """Normalised ellipsoid radius (< 1 inside) in the bounding box."""
        ext = np.full(3, float(self.radii.max()) * pad)
        sl = g.box(self.center, ext)
        if sl is None:
            return None, None
        x, y, z = g.local(sl, self.center, self.rot)
        r = self.radii.astype(np.float32)
        return sl, np.sqrt((x / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2)


class _Canvas:
    """Label map + tissue map being painted, with the case's random streams."""

    def __init__(self, g: _Grid, rng: np.random.Generator, surface: np.ndarray) -> None:
        self.g = g
        self.rng = rng
        self.labels = np.zeros(g.shape, dtype=np.uint8)
        self.tissue = np.zeros(g.shape, dtype=np.uint8)  # 0 = air
        self.surface = surface  # (X, Y, Z) unit-std smooth field for organ surface bumps
        self.organs: dict[int, _Ellipsoid] = {}

    def jitter(self, center: Sequence[float], radii: Sequence[float], scale: float = 1.0,
               c_sd: float = 0.025, r_sd: float = 0.06, rot_sd: float = 0.12,
               base_rot: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> _Ellipsoid:
        rng = self.rng
        c = np.asarray(center, dtype=np.float64) + rng.normal(0.0, c_sd, 3)
        r = np.asarray(radii, dtype=np.float64) * scale * (1.0 + rng.normal(0.0, r_sd, 3))
        angles = np.asarray(base_rot) + rng.normal(0.0, rot_sd, 3) * np.array([1.0, 0.4, 0.4])
        return _Ellipsoid(c, r, _rotation(*angles))

    def paint(self, e: _Ellipsoid, label: int | None, tissue: int, *, amp: float = 0.06,
              where: np.ndarray | None = None, only: tuple[int, ...] | None = None,
              rho_max: float = 1.0) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
        """Paint voxels inside the (surface-perturbed) ellipsoid; returns (box, mask in box)."""
        sl, rho = e.rho(self.g, pad=1.0 + 2 * amp)
        if sl is None:
            return None, None
        m = rho < rho_max * (1.0 + amp * self.surface[sl])
        if where is not None:
            m &= where[sl]
        if only is not None:
            m &= np.isin(self.labels[sl], only)
        if label is not None:
            self.labels[sl][m] = label
            self.organs[label] = e
        self.tissue[sl][m] = tissue
        return sl, m


# --- anatomy ---------------------------------------------------------------------------

def _torso(cv: _Canvas, abnormal: set[str], rng: np.random.Generator) -> dict[str, object]:
    """Paint body, lungs, heart, liver, spleen, kidneys, spine, ribs (and effusion)."""
    g = cv.g
    u0, u1, u2 = g.u
    x, y = u0[:, None], u1[None, :]
    a = 0.88 * (1 + rng.normal(0, 0.03))
    b = 0.64 * (1 + rng.normal(0, 0.04))
    yc = -0.04 + rng.normal(0, 0.015)
    b_y = np.where(y - yc < 0, 0.93 * b, b)  # flatter back
    rho2d = np.sqrt((x / a) ** 2 + ((y - yc) / b_y) ** 2).astype(np.float32)
    rho_body = rho2d[:, :, None] * (1.0 - 0.035 * cv.surface)  # smooth random outline
    fat_in = 1.0 - max(0.09, g.vox_to_u(1.5, 0) / a)
    mus_in = fat_in - max(0.06, g.vox_to_u(1.5, 0) / a)
    body = rho_body < 1.0
    cv.labels[body] = 1
    cv.tissue[body] = _T["soft"]
    cv.tissue[body & (rho_body >= fat_in)] = _T["fat"]
    cv.tissue[body & (rho_body >= mus_in) & (rho_body < fat_in)] = _T["muscle"]
    cavity = rho_body < mus_in - 0.02
    # Paraspinal muscles and visceral fat pockets give the abdomen some structure.
    for side in (-1, 1):
        e = _Ellipsoid(np.array([side * 0.15, yc - 0.49 * b, 0.0]), np.array([0.11, 0.08, 2.0]), np.eye(3))
        cv.paint(e, None, _T["muscle"], amp=0.05, where=cavity)
    fat_pockets = cavity & (u2[None, None, :] < 0.0)
    fat_pockets &= cv.surface < -0.7
    cv.tissue[fat_pockets] = _T["fat"]

    # Lungs (air) in the upper half; heart/liver carve them afterwards.
    for label, side in ((2, 1), (3, -1)):
        e = cv.jitter([side * 0.41, -0.03, 0.42], [0.31 if side > 0 else 0.29, 0.44, 0.52])
        cv.paint(e, label, _T["lung"], amp=0.05, where=cavity)
    # Pericardial fat, then heart (myocardium shell, blood pool inside).
    heart_scale = 1.3 if "cardiomegaly" in abnormal else 1.0
    eh = cv.jitter([-0.10, 0.14, 0.16], [0.27, 0.22, 0.21], scale=heart_scale, base_rot=(-0.5, 0.0, 0.3))
    cv.paint(_Ellipsoid(eh.center, eh.radii * 1.08, eh.rot), 1, _T["fat"], amp=0.03, where=cavity)
    cv.paint(eh, 4, _T["myocardium"], amp=0.03, where=cavity)
    cv.paint(_Ellipsoid(eh.center, eh.radii * 0.62, eh.rot), None, _T["blood"], amp=0.05, only=(4,))
    # Liver: ellipsoid tapering towards patient left (low x), dome carving the right lung.
    liver_scale = 1.22 if "hepatomegaly" in abnormal else 1.0
    el = cv.jitter([0.30, 0.02, -0.27], [0.50, 0.40, 0.28], scale=liver_scale, base_rot=(0.0, 0.15, 0.0))
    if "hepatomegaly" in abnormal:
        el.radii[2] *= 1.12
        el.center[2] -= 0.05
    sl, rho = el.rho(g, pad=1.3)
    if sl is not None:
        xl, _, zl = g.local(sl, el.center, el.rot)
        taper = 0.55 + 0.45 * np.clip((xl / el.radii[0] + 1.0) / 2.0, 0.0, 1.0)
        rho = np.sqrt(rho**2 + (zl / el.radii[2]) ** 2 * (1.0 / taper**2 - 1.0))
        m = (rho < 1.0 + 0.05 * cv.surface[sl]) & cavity[sl]
        cv.labels[sl][m] = 5
        cv.tissue[sl][m] = _T["liver"]
        cv.organs[5] = el
    cv.paint(cv.jitter([-0.55, -0.22, -0.22], [0.13, 0.22, 0.18], base_rot=(0.5, 0.0, 0.0)), 6,
             _T["spleen"], amp=0.05, where=cavity)
    for label, side, zc in ((7, 1, -0.64), (8, -1, -0.56)):
        ek = cv.jitter([side * 0.33, -0.36, zc], [0.11, 0.10, 0.22], base_rot=(side * 0.35, side * -0.15, 0.0))
        cv.paint(ek, label, _T["kidney"], amp=0.04, where=cavity)
        sinus = _Ellipsoid(ek.center - np.array([side * 0.04, 0.0, 0.0]), ek.radii * np.array([0.4, 0.45, 0.55]),
                           ek.rot)
        cv.paint(sinus, None, _T["fat"], amp=0.0, only=(label,))

    # Spine: vertebral bodies (cortical shell, cancellous core) separated by discs,
    # posterior arch around the spinal canal; period ~ one vertebra.
    sp_y = yc - 0.50 * b
    period = 0.22 + rng.normal(0, 0.01)
    phase0 = rng.uniform(0, period)
    z_phase = np.mod(u2 - phase0, period) / period  # (Z,)
    disc_z = (z_phase < 0.22)[None, None, :]
    rx_v, ry_v = 0.085, 0.08
    rv = np.sqrt((u0[:, None] / rx_v) ** 2 + ((u1[None, :] - sp_y) / ry_v) ** 2)[:, :, None]
    vbody = (rv < 1.0) & body
    canal_y = sp_y - ry_v - 0.045
    rc = np.sqrt((u0[:, None] / 0.04) ** 2 + ((u1[None, :] - canal_y) / 0.04) ** 2)[:, :, None]
    arch = ((rc >= 1.0) & (rc < 1.9)) | (
        (np.abs(u0)[:, None, None] < max(0.02, g.vox_to_u(1.0, 0)))
        & ((u1[None, :, None] < canal_y) & (u1[None, :, None] > canal_y - 0.10))
    )
    arch = arch & (z_phase > 0.3)[None, None, :] & (z_phase < 0.85)[None, None, :] & body
    bone = (vbody & ~disc_z) | arch
    cv.labels[bone] = 9
    cv.tissue[vbody & ~disc_z] = _T["cancellous"]
    cv.tissue[(vbody & ~disc_z & (rv > 0.78)) | arch] = _T["cortical"]
    cv.tissue[vbody & disc_z] = _T["disc"]
    cv.labels[vbody & disc_z] = 1
    canal = (rc < 1.0) & body
    cv.tissue[canal] = _T["csf"]
    cv.labels[canal] = 1

    # Ribs: sloping bands in the chest wall (posterior ends higher), open anteriorly.
    rib_in, rib_out = mus_in - 0.07, mus_in - 0.005
    ring = (rho_body >= rib_in) & (rho_body < rib_out)
    rib_period = 0.17 + rng.normal(0, 0.008)
    rib_w = max(0.045, g.vox_to_u(2.2, 2))
    rib_phase = np.mod(u2[None, None, :] + 0.35 * u1[None, :, None] - rng.uniform(0, rib_period), rib_period)
    ribs = ring & (rib_phase < rib_w) & (u2[None, None, :] > -0.4)
    ribs &= ~((np.abs(u0)[:, None, None] < 0.2) & (u1[None, :, None] > yc))
    cv.labels[ribs] = 10
    cv.tissue[ribs] = _T["rib"]

    info: dict[str, object] = {}
    if "pleural effusion" in abnormal:
        side = ("right", "left", "bilateral")[int(rng.integers(3))]
        painted: list[str] = []
        for label, s in ((2, "right"), (3, "left")):
            if side not in (s, "bilateral") or label not in cv.organs:
                continue
            e = cv.organs[label]
            sl = g.box(e.center, e.radii * 1.2)
            if sl is None:
                continue
            _, yl, zl = g.local(sl, e.center)
            amount = rng.uniform(0.35, 0.7)
            m = (cv.labels[sl] == label) & ((yl / e.radii[1] + 0.7 * zl / e.radii[2]) < -1.05 + amount)
            cv.labels[sl][m] = 11
            cv.tissue[sl][m] = _T["effusion"]
            if m.any():
                painted.append(s)
        if painted:
            info["effusion_side"] = "bilateral" if len(painted) == 2 else painted[0]
    return info


def _head(cv: _Canvas, rng: np.random.Generator) -> None:
    """Paint scalp, skull (tables and diploe), CSF, gray/white matter and ventricles."""
    g = cv.g
    eh = cv.jitter([0.0, 0.0, 0.04], [0.80, 0.92, 0.86], c_sd=0.015, r_sd=0.03, rot_sd=0.05)
    sl, rho = eh.rho(g, pad=1.1)
    if sl is None:
        return
    rho = rho / (1.0 + 0.02 * cv.surface[sl])
    r_mm = float(np.min(eh.radii * g.half_mm))
    vox = float(g.spacing.mean())

    def th(mm: float, min_vox: float = 1.6) -> float:
        return max(mm, min_vox * vox) / r_mm

    skull_out = 1.0 - th(5.0)
    skull_in = skull_out - th(7.0, 2.4)
    brain_out = skull_in - th(2.5, 1.0)
    # Cortex: a gray-matter band whose inner border undulates (gyri/sulci at voxel scale).
    folding = smooth_noise(rho.shape, 7.0 / g.spacing, rng)[0]
    gm_in = brain_out - th(5.0, 2.0) * np.clip(1.0 + 0.8 * folding, 0.4, None)
    lab = np.zeros(rho.shape, np.uint8)
    tis = np.zeros(rho.shape, np.uint8)
    for lo, hi, label, tissue in ((skull_out, 1.0, 1, "scalp"), (skull_in, skull_out, 2, "skull"),
                                  (brain_out, skull_in, 3, "csf")):
        m = (rho >= lo) & (rho < hi)
        lab[m], tis[m] = label, _T[tissue]
    diploe = (rho >= skull_in + (skull_out - skull_in) * 0.33) & (rho < skull_out - (skull_out - skull_in) * 0.33)
    tis[diploe] = _T["diploe"]
    gm = (rho < brain_out) & (rho >= gm_in)
    wm = rho < np.minimum(gm_in, brain_out)
    lab[gm], tis[gm] = 4, _T["gm"]
    lab[wm], tis[wm] = 5, _T["wm"]
    cv.labels[sl] = lab
    cv.tissue[sl] = tis
    cv.organs[4] = eh
    cv.organs[5] = eh
    vent_scale = 1.0 + rng.normal(0.0, 0.08)
    for side in (-1, 1):
        ev = cv.jitter([side * 0.10, 0.02, 0.18], [0.06, 0.30, 0.10], scale=vent_scale, c_sd=0.01,
                       r_sd=0.05, rot_sd=0.03, base_rot=(side * 0.15, 0.0, 0.0))
        ev.radii[0] = max(ev.radii[0], g.vox_to_u(1.5, 0))
        cv.paint(ev, 6, _T["csf"], amp=0.05, only=(4, 5))
    e3 = _Ellipsoid(np.array([0.0, -0.02, 0.02]), np.array([max(0.025, g.vox_to_u(1.2, 0)), 0.12, 0.08]),
                    np.eye(3))
    cv.paint(e3, 6, _T["csf"], amp=0.0, only=(4, 5))


# --- lesions ---------------------------------------------------------------------------

def _default_kind(organ: str, modality: str, size_mm: float, contrast: float | None,
                  rng: np.random.Generator) -> str:
    """Finding name for a lesion without an explicit kind (lung: nodule below 3 cm, else mass)."""
    if organ == "lung":
        return "mass" if size_mm >= 30.0 else "nodule"
    if contrast is not None:
        if modality == "CT":
            return "hypodense lesion" if contrast < 0 else "mass"
        return "hyperintense lesion" if contrast > 0 else "hypointense lesion"
    options = [k for (o, k) in _CONTRAST[modality] if o == organ and (k != "mass" or size_mm >= 25.0)]
    return options[int(rng.integers(len(options)))] if options else "mass"


def _lesion_mask(g: _Grid, center_u: np.ndarray, radius_mm: np.ndarray, rot: np.ndarray,
                 rng: np.random.Generator, amp: float = 0.18) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    radii_u = np.array([g.mm_to_u(radius_mm[a], a) for a in range(3)])
    e = _Ellipsoid(center_u, radii_u, rot)
    sl = g.box(center_u, np.full(3, radii_u.max() * (1.0 + 2 * amp)))
    if sl is None:
        return None, None
    _, rho = e.rho(g, pad=1.0 + 2 * amp)
    shape = rho.shape
    step = np.maximum(np.array([radius_mm.mean() / g.spacing[a] for a in range(3)]) * 0.7, 1.0)
    bumps = smooth_noise(shape, step, rng)[0]
    return sl, rho < 1.0 + amp * bumps


@dataclass
class _Placed:
    label_id: int
    kind: str
    organ: str  # generic organ name used in the Finding
    host: int  # label id of the host organ (4 stands for the whole brain)
    contrast: float
    size_mm: float  # maximal diameter measured on the label map


def _ball_fraction(host_mask: np.ndarray, c: np.ndarray, radius_mm: float, spacing: np.ndarray) -> float:
    """Fraction of a ball around voxel ``c`` that lies in ``host_mask`` (placement score)."""
    r = np.ceil(radius_mm / spacing).astype(int)
    lo = np.maximum(c - r, 0)
    hi = np.minimum(c + r + 1, host_mask.shape)
    ii, jj, kk = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = (((ii - c[0]) * spacing[0]) ** 2 + ((jj - c[1]) * spacing[1]) ** 2
              + ((kk - c[2]) * spacing[2]) ** 2) <= radius_mm**2
    return float(host_mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside].mean())


def _place_lesions(cv: _Canvas, specs: list[LesionSpec], modality: str, first_id: int,
                   rng: np.random.Generator, head: bool) -> list[_Placed]:
    """Paint each lesion into its host organ (clipped to it), away from earlier lesions."""
    g = cv.g
    placed: list[_Placed] = []
    centers: list[tuple[np.ndarray, float]] = []  # (voxel centre, radius in voxels)
    for n, spec in enumerate(specs):
        if spec.organ not in _HOSTS:
            raise InputError(f"unknown lesion organ {spec.organ!r}.", f"Use one of {sorted(_HOSTS)}.")
        if (spec.organ == "brain") != head:
            raise InputError(f"lesion organ {spec.organ!r} is not part of this phantom body.",
                             "Use body='head' for brain lesions and body='chest_abdomen' for the others.")
        if spec.diameter_mm <= 0:
            raise InputError(f"lesion diameter must be positive, got {spec.diameter_mm} mm.")
        present = np.bincount(cv.labels.ravel(), minlength=256) > 0
        candidates = [h for h in _HOSTS[spec.organ] if present[h]]
        if not candidates:
            raise InputError(f"the {spec.organ} is empty in this phantom; cannot place a lesion.",
                             "Use a larger shape or field of view.")
        radius_mm = spec.diameter_mm / 2.0 * (1.0 + rng.normal(0.0, 0.1, 3)).clip(0.75, 1.25)
        rot = _rotation(*rng.uniform(-np.pi, np.pi, 3))
        r_vox = float(np.max(radius_mm / g.spacing))
        if spec.center_ijk is not None:
            c = np.asarray(spec.center_ijk, dtype=np.int64)
            if c.shape != (3,) or np.any(c < 0) or np.any(c >= np.asarray(g.shape)):
                raise InputError(f"lesion centre {tuple(c)} lies outside the volume of shape {g.shape}.")
            host = int(cv.labels[tuple(c)])
            if host not in candidates:
                raise InputError(f"lesion centre {tuple(int(v) for v in c)} is not inside the {spec.organ}.",
                                 "Leave center_ijk=None to place it automatically.")
        else:
            host = candidates[int(rng.integers(len(candidates)))]
            host_ids = tuple(candidates) if head else (host,)
            host_mask = np.isin(cv.labels, host_ids)
            cand = np.flatnonzero(host_mask)
            best, best_score = None, -1.0
            for _trial in range(40):
                c = np.array(np.unravel_index(cand[int(rng.integers(cand.size))], g.shape))
                if any(np.linalg.norm(c - pc) < pr + r_vox + 2.0 for pc, pr in centers):
                    continue
                score = _ball_fraction(host_mask, c, spec.diameter_mm / 2.0, g.spacing)
                if score > best_score:
                    best, best_score = c, score
                if score >= 0.97:
                    break
            c = best if best is not None else np.array(np.unravel_index(cand[0], g.shape))
        host_ids = tuple(candidates) if head else (host,)
        center_u = np.array([g.u[a][c[a]] for a in range(3)], dtype=np.float64)
        sl, m = _lesion_mask(g, center_u, radius_mm, rot, rng)
        if sl is None or m is None:
            continue
        m &= np.isin(cv.labels[sl], host_ids)
        if not m.any():  # tiny lesion at an organ edge: keep at least its centre voxel
            m[tuple(int(c[a]) - sl[a].start for a in range(3))] = True
        organ = "brain" if head else _GENERIC_ORGAN[host]
        size = round(max_diameter_mm(m, g.spacing), 1)  # measured, so "nodule" vs "mass" is consistent
        kind = spec.kind or _default_kind(organ, modality, size, spec.contrast, rng)
        contrast = spec.contrast
        if contrast is None:
            contrast = _CONTRAST[modality].get((organ, kind), -0.4 if modality == "MR" else -30.0)
        label_id = first_id + n
        cv.labels[sl][m] = label_id
        placed.append(_Placed(label_id, kind, organ, 4 if head else host, float(contrast), size))
        centers.append((c.astype(np.float64), r_vox))
    return placed


def _random_lesions(body: str, n: int, g: _Grid, cv: _Canvas, rng: np.random.Generator) -> list[LesionSpec]:
    """Random lesion specs; diameters scale with the host organ so they fit any field of view."""
    specs = []
    if body == "head":
        organs, weights = ["brain"], [1.0]
    else:
        organs, weights = ["lung", "liver", "kidney", "spleen"], [0.35, 0.35, 0.15, 0.15]
    present = np.bincount(cv.labels.ravel(), minlength=256) > 0
    for _ in range(n):
        organ = organs[int(rng.choice(len(organs), p=weights))]
        e = cv.organs.get(_HOSTS[organ][0])
        if e is None or not present[list(_HOSTS[organ])].all():
            continue
        organ_d_mm = float(np.min(2.0 * e.radii * g.half_mm))
        lo, hi = (0.08, 0.25) if organ == "brain" else (0.15, 0.45)
        d = max(rng.uniform(lo, hi) * organ_d_mm, 3.0 * float(g.spacing.max()))
        specs.append(LesionSpec(organ=organ, diameter_mm=round(float(d), 1)))
    return specs


# --- locations -------------------------------------------------------------------------

def _fractions(centroid: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    lo, hi = np.asarray(box[:3], float), np.asarray(box[3:], float) - 1.0
    return np.clip((centroid - lo) / np.maximum(hi - lo, 1.0), 0.0, 1.0)


def _location(host_label: int, body: str, centroid: np.ndarray, host_box: tuple[int, ...]) -> str:
    """Words for where a lesion sits, from its centroid relative to the host organ's box.

    Fractions are (x: 1 = patient right, y: 1 = anterior, z: 1 = superior).
    """
    fx, fy, fz = _fractions(centroid, host_box)
    if body == "head":
        side = "right" if fx >= 0.5 else "left"
        if fy > 0.62:
            lobe = "frontal"
        elif fy < 0.25:
            lobe = "occipital"
        else:
            lobe = "temporal" if fz < 0.42 else "parietal"
        return f"{side} {lobe} lobe"
    if host_label in (2, 3):
        side = "right" if host_label == 2 else "left"
        if side == "right":
            lobe = "upper" if fz > 0.6 else ("middle" if fz > 0.35 and fy > 0.5 else "lower")
        else:
            lobe = "upper" if fz > 0.5 else "lower"
        return f"{side} {lobe} lobe"
    if host_label == 5:
        sup = fz > 0.5
        if fx > 0.45:
            if fy < 0.5:
                seg = "VII" if sup else "VI"
            else:
                seg = "VIII" if sup else "V"
            return f"right hepatic lobe segment {seg}"
        seg = ("IVa" if sup else "IVb") if fx > 0.22 else ("II" if sup else "III")
        return f"left hepatic lobe segment {seg}"
    if host_label == 6:
        return "upper pole of the spleen" if fz > 0.66 else ("lower pole of the spleen" if fz < 0.33
                                                              else "mid spleen")
    if host_label in (7, 8):
        side = "right" if host_label == 7 else "left"
        pole = "upper pole" if fz > 0.66 else ("lower pole" if fz < 0.33 else "interpolar region")
        return f"{pole} of the {side} kidney"
    return "unspecified location"


# --- the public entry point ------------------------------------------------------------

def make_phantom(
    seed: int,
    *,
    modality: Literal["CT", "MR"] = "CT",
    shape: tuple[int, int, int] = (96, 96, 96),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    n_lesions: int | None = None,
    lesions: list[LesionSpec] | None = None,
    noise: float | None = None,
    blur_mm: float | None = None,
    body: Literal["chest_abdomen", "head"] = "chest_abdomen",
    abnormalities: Sequence[str] | None = None,
) -> PhantomCase:
    """Generate one SIMULATED study (image, labels, findings, report), deterministic in ``seed``.

    Args:
        seed: the only source of randomness (``np.random.default_rng(seed)``).
        modality: "CT" (Hounsfield units) or "MR" (T1-like, arbitrary positive units with a
            smooth bias field and Rician noise).
        shape, spacing: canonical ``(X, Y, Z)`` voxels and mm per voxel.
        n_lesions: number of random lesions (``None``: 0-3 drawn from the seed). Ignored when
            ``lesions`` is given.
        lesions: explicit lesions, placed in order (ids ``first_lesion_id + index``).
        noise: CT: Gaussian noise std in HU; MR: Rician noise std relative to the brightest
            tissue (fat = ~1). ``None``: drawn from the seed (CT torso 6-18 HU, head 3-8 HU; MR
            0.015-0.04).
        blur_mm: Gaussian std in mm simulating the point-spread function (partial volume).
            ``None``: drawn from the seed (about half a voxel); 0 disables.
        body: "chest_abdomen" (torso) or "head".
        abnormalities: organ states to include, from ``ABNORMALITIES`` (torso only). ``None``:
            each drawn from the seed with probability ~0.15; ``()``: none.

    Returns:
        A ``PhantomCase``; ``case.image.meta["simulated"] is True``.
    """
    return _generate(
        seed, modality=modality, shape=shape, spacing=spacing, n_lesions=n_lesions, lesions=lesions,
        noise=noise, blur_mm=blur_mm, body=body, abnormalities=abnormalities,
    )[0]


def _generate(
    seed: int,
    *,
    modality: Literal["CT", "MR"] = "CT",
    shape: tuple[int, int, int] = (96, 96, 96),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    n_lesions: int | None = None,
    lesions: list[LesionSpec] | None = None,
    noise: float | None = None,
    blur_mm: float | None = None,
    body: Literal["chest_abdomen", "head"] = "chest_abdomen",
    abnormalities: Sequence[str] | None = None,
) -> tuple[PhantomCase, np.ndarray, _Acquisition]:
    """``make_phantom`` plus the noise-free image and acquisition (for deformed pairs)."""
    modality = modality.upper()  # type: ignore[assignment]
    if modality not in ("CT", "MR"):
        raise InputError(f"phantom modality {modality!r} is not supported.", "Use 'CT' or 'MR'.")
    if body not in ("chest_abdomen", "head"):
        raise InputError(f"phantom body {body!r} is not supported.", "Use 'chest_abdomen' or 'head'.")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape {shape} is too small.", "Use three sizes of at least 8 voxels.")
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if abnormalities is not None:
        unknown = set(abnormalities) - set(ABNORMALITIES)
        if unknown:
            raise InputError(f"unknown abnormalities {sorted(unknown)}.", f"Use some of {list(ABNORMALITIES)}.")

    anat_rng, lesion_rng, noise_rng, text_rng = np.random.default_rng(seed).spawn(4)
    g = _Grid(shape, spacing)  # type: ignore[arg-type]
    fields = smooth_noise(shape, (np.asarray(shape) / 6.0).clip(2.0, None), anat_rng, channels=1)
    cv = _Canvas(g, anat_rng, fields[0])

    # Abnormal organ states are drawn even when given, so the anatomy stream stays aligned.
    draws = anat_rng.random(len(ABNORMALITIES))
    if body == "head":
        abnormal: set[str] = set()
    elif abnormalities is None:
        abnormal = {a for a, r in zip(ABNORMALITIES, draws) if r < 0.15}
    else:
        abnormal = set(abnormalities)
    info = _torso(cv, abnormal, anat_rng) if body == "chest_abdomen" else {}
    if body == "head":
        _head(cv, anat_rng)
    organ_names = TORSO_LABELS if body == "chest_abdomen" else HEAD_LABELS
    first_id = max(organ_names) + 1

    if lesions is None:
        n = int(lesion_rng.integers(0, 4)) if n_lesions is None else int(n_lesions)
        specs = _random_lesions(body, n, g, cv, lesion_rng)
    else:
        specs = list(lesions)
    if first_id + len(specs) > 255:
        raise InputError(f"{len(specs)} lesions do not fit a uint8 label map.", "Use at most 200 lesions.")
    placed = _place_lesions(cv, specs, modality, first_id, lesion_rng, head=body == "head")

    clean, blur = _render(cv, modality, body, placed, blur_mm, anat_rng, noise_rng)
    acq = _draw_acquisition(modality, noise, g, noise_rng, head=body == "head")
    image = _acquire(clean, acq, noise_rng)
    labels = cv.labels
    label_names = dict(organ_names)
    for p in placed:
        label_names[p.label_id] = f"lesion {p.label_id - first_id + 1}"

    findings = _findings(labels, placed, abnormal, info, body, g)
    organs = HEAD_ORGANS if body == "head" else TORSO_ORGANS
    report = render_report(findings, rng=text_rng, organs_examined=organs, modality=modality)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    meta = {"simulated": True, "generator": "radfm.data.phantom", "seed": int(seed), "body": body}
    case = PhantomCase(
        image=Volume(image, affine, modality=modality, meta={**meta, "noise": acq.sd, "blur_mm": blur}),
        labels=Volume(labels, affine.copy(), modality="unknown", meta={**meta, "kind": "labels"}),
        label_names=label_names,
        findings=findings,
        report=report,
        seed=int(seed),
    )
    return case, clean, acq


def _render(cv: _Canvas, modality: str, body: str, placed: list[_Placed], blur_mm: float | None,
            anat_rng: np.random.Generator, noise_rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Tissue map -> noise-free intensities (+ texture, vessels, lesions) after PSF blur.

    Returns the float32 ``(X, Y, Z)`` image and the blur std used (mm).
    """
    g = cv.g
    ct = modality == "CT"
    col = 0 if ct else 1
    names = list(_TISSUES)
    base = np.array([_TISSUES[n][col] for n in names], dtype=np.float32)
    # Per-case tissue jitter: a few HU on CT, ~8% on MR, so intensities are not constants.
    if ct:
        jit = anat_rng.normal(0.0, 4.0, len(names)).astype(np.float32)
        jit[_T["air"]] = 0.0
        base += jit
    else:
        base *= (1.0 + anat_rng.normal(0.0, 0.08, len(names))).clip(0.7, 1.3).astype(np.float32)
    tex_amp = np.array([_TISSUES[n][2 if ct else 3] for n in names], dtype=np.float32)

    tex = smooth_noise(g.shape, 4.0 / g.spacing * 2.0, noise_rng, channels=1)[0]
    tissue = cv.tissue
    if body == "chest_abdomen" and (2 in cv.organs or 3 in cv.organs):
        # Vessel-like lung texture: where two smooth fields both cross zero (curves, not sheets),
        # thicker towards the hila.
        v = smooth_noise(g.shape, 10.0 / g.spacing, noise_rng, channels=2)
        hx, hy, hz = (g.u[0][:, None, None], g.u[1][None, :, None], g.u[2][None, None, :])
        hil = np.sqrt((np.abs(hx) - 0.15) ** 2 + (hy + 0.0) ** 2 + (hz - 0.3) ** 2)
        t = 0.15 + 0.3 * np.clip(1.0 - hil / 0.6, 0.0, 1.0)
        vessels = (np.abs(v[0]) < t) & (np.abs(v[1]) < t) & (tissue == _T["lung"])
        tissue = tissue.copy()
        tissue[vessels] = _T["blood"]
    img = base[tissue] + tex_amp[tissue] * tex

    for p in placed:
        m = cv.labels == p.label_id
        host_t = _ORGAN_TISSUE.get(p.organ)
        if host_t is None:  # brain: gray or white matter, whichever the lesion sits in most
            host_t = _T["gm"] if (cv.tissue[m] == _T["gm"]).mean() > 0.5 else _T["wm"]
        host = base[host_t]
        val = host + p.contrast if ct else host * max(1.0 + p.contrast, 0.02)
        img[m] = val + 0.5 * tex_amp[host_t] * tex[m]

    blur = float(anat_rng.uniform(0.4, 0.7) * g.spacing.mean()) if blur_mm is None else float(blur_mm)
    if blur > 0:
        img = ndimage.gaussian_filter(img, sigma=blur / g.spacing, mode="nearest", truncate=3.0)

    return img.astype(np.float32, copy=False), blur


@dataclass
class _Acquisition:
    """Scanner-side parameters, fixed per case so a deformed partner gets the same ones."""

    modality: str
    sd: float  # CT: HU; MR: relative to the brightest tissue
    gain: float = 1.0  # MR arbitrary-unit scale
    bias: np.ndarray | None = None  # MR multiplicative (X, Y, Z) bias field, in scanner space


def _draw_acquisition(modality: str, noise: float | None, g: _Grid, rng: np.random.Generator,
                      head: bool = False) -> _Acquisition:
    if modality == "CT":  # head protocols use more dose: less noise, so gray/white contrast shows
        lo, hi = (3.0, 8.0) if head else (6.0, 18.0)
        return _Acquisition("CT", float(rng.uniform(lo, hi)) if noise is None else float(noise))
    bias = np.exp(0.18 * smooth_noise(g.shape, np.asarray(g.shape) / 2.5, rng)[0]).astype(np.float32)
    sd = float(rng.uniform(0.015, 0.04)) if noise is None else float(noise)
    return _Acquisition("MR", sd, float(rng.uniform(600.0, 1400.0)), bias)


def _acquire(clean: np.ndarray, acq: _Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Noise-free image -> what the scanner gives: CT additive Gaussian noise clipped to the
    12-bit HU range; MR bias field, Rician noise (magnitude of complex Gaussian) and gain."""
    shape = clean.shape
    if acq.modality == "CT":
        img = clean.copy()
        if acq.sd > 0:
            img += rng.standard_normal(shape, dtype=np.float32) * np.float32(acq.sd)
        np.clip(img, -1024.0, 3071.0, out=img)
        return img
    img = clean * acq.bias if acq.bias is not None else clean.copy()
    n1 = rng.standard_normal(shape, dtype=np.float32) * np.float32(acq.sd)
    n2 = rng.standard_normal(shape, dtype=np.float32) * np.float32(acq.sd)
    img = np.sqrt((img + n1) ** 2 + n2**2)
    return (img * np.float32(acq.gain)).astype(np.float32, copy=False)


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


_ORGAN_TISSUE = {"lung": _T["lung"], "liver": _T["liver"], "spleen": _T["spleen"], "kidney": _T["kidney"]}


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
