"""Phantom rendering and acquisition: tissue map -> noise-free image -> scanner image (noise, bias).

Why apart from generation: deformed pairs (``radfm.data.deform``) re-acquire a warped clean
image with the same scanner parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radfm.data.phantom.canvas import _Canvas, _Grid, smooth_noise
from radfm.data.phantom.lesions import _Placed
from radfm.data.phantom.spec import (
    _ORGAN_TISSUE,
    _T,
    _TISSUES,
)


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


