"""Phantom geometry: smooth random fields, the normalised grid, ellipsoids and the painted canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


