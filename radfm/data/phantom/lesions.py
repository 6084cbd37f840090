"""Phantom lesions: placement inside host organs, default kinds, and location words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radfm.data.findings import max_diameter_mm
from radfm.data.phantom.canvas import _Canvas, _Ellipsoid, _Grid, _rotation, smooth_noise
from radfm.data.phantom.spec import (
    _CONTRAST,
    _GENERIC_ORGAN,
    _HOSTS,
    LesionSpec,
)
from radfm.errors import InputError

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


