"""The one geometry object of a prepared input: every map between the file as stored, world RAS+ mm,
the canonical grid and the model grid, for points, boxes, windows and arrays.

Why one object: a click used to travel world → canonical → native → voxel → canonical → model
through four modules, and the way back (logits → canonical) existed twice. Here every space is
reached through one 4×4 matrix to the canonical grid, so any pair of spaces composes exactly and
an oblique affine costs nothing extra.

Spaces (points are ``(3,)`` or ``(N, 3)`` float64):

- ``"stored"``: voxel index of the file as stored (nibabel's array order, 3D Slicer's IJK);
- ``"world"``: patient coordinates in mm, RAS+;
- ``"canonical"``: index into ``Volume.array`` (closest RAS+ orientation, ``radfm.io.volume``);
- ``"model"``: index ``(z, y, x)`` into the model tensor ``(C, D, H, W)``: the canonical grid with
  its axes reversed, resampled as ``F.interpolate(align_corners=False)`` places voxel centres
  (``model = (canonical + 0.5) · scale − 0.5`` per axis), padding at the end of each axis.

Arrays: :func:`canonical_to_model` / :func:`model_to_canonical` are the axis swap (no resampling);
:meth:`PreparedGeometry.to_canonical` takes model-grid output (whole padded grid or one window)
back onto the canonical grid, :meth:`PreparedGeometry.to_stored` on to the file's own voxel order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from radfm.errors import InputError
from radfm.io.coords import _points, check_inside
from radfm.io.orientation import native_to_canonical_index_affine, to_native
from radfm.io.volume import NativeGrid, Volume

__all__ = ["PreparedGeometry", "Space", "Window", "canonical_to_model", "model_to_canonical"]

Space = Literal["stored", "world", "canonical", "model"]
#: ``((z0, z1), (y0, y1), (x0, x1))``, half-open, on the padded model grid.
Window = tuple[tuple[int, int], ...]

_REVERSE = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z) ↔ (z, y, x), its own inverse


def canonical_to_model(array: Any, *, channels: Literal["last", "first"] = "last") -> Any:
    """Canonical RAS+ array -> model order (the axis swap, no resampling).

    ``(X, Y, Z)`` -> ``(Z, Y, X)``; 4D ``(X, Y, Z, C)`` (``channels="last"``, the ``Volume`` layout)
    or ``(C, X, Y, Z)`` (``channels="first"``) -> ``(C, Z, Y, X)``. Works on numpy arrays (a view)
    and torch tensors (``permute``).
    """
    if array.ndim == 3:
        perm: tuple[int, ...] = (2, 1, 0)
    elif array.ndim == 4:
        perm = (3, 2, 1, 0) if channels == "last" else (0, 3, 2, 1)
    else:
        raise InputError(f"expected a 3D or 4D array, got shape {tuple(array.shape)}.")
    return array.permute(*perm) if isinstance(array, torch.Tensor) else array.transpose(perm)


def model_to_canonical(array: Any, *, channels: Literal["last", "first"] = "last") -> Any:
    """Inverse of ``canonical_to_model``: ``(Z, Y, X)`` -> ``(X, Y, Z)``; ``(C, Z, Y, X)`` ->
    ``(X, Y, Z, C)`` (``channels="last"``) or ``(C, X, Y, Z)`` (``channels="first"``).

    The same call as ``canonical_to_model``: each of its axis permutations is its own inverse.
    """
    return canonical_to_model(array, channels=channels)


def _resample_axis(x: torch.Tensor, dim: int, positions: np.ndarray) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at continuous ``positions`` (clamped at the ends),
    the 1D step of ``F.interpolate(mode="trilinear", align_corners=False)``."""
    n = x.shape[dim]
    p = np.clip(positions, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * x.ndim
    shape[dim] = len(p)
    f = torch.from_numpy((p - i0).astype(np.float32)).view(shape)
    return x.index_select(dim, torch.from_numpy(i0)) * (1.0 - f) + x.index_select(dim, torch.from_numpy(i1)) * f


@dataclass(frozen=True, eq=False)
class PreparedGeometry:
    """Where every voxel of a prepared input is, in each space (see the module docstring).

    Attributes:
        affine: 4×4 canonical index → world RAS+ mm (``Volume.affine``).
        canonical_shape: ``(X, Y, Z)`` of the canonical array.
        resampled_shape: ``(D, H, W)`` of the model grid before padding.
        padded_shape: ``(D, H, W)`` of the model tensor (padding at the end of each axis).
        native: the file's stored grid (``None`` for arrays made in memory: stored = canonical).
    """

    affine: np.ndarray = field(repr=False)
    canonical_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    native: NativeGrid | None = field(default=None, repr=False)

    @classmethod
    def of(cls, volume: Volume, resampled_shape: tuple[int, ...] | None = None,
           padded_shape: tuple[int, ...] | None = None) -> PreparedGeometry:
        """The geometry of ``volume`` on a model grid (default: its own grid, axes reversed, no padding)."""
        res = tuple(int(n) for n in (resampled_shape or volume.shape[::-1]))
        pad = tuple(int(n) for n in (padded_shape or res))
        return cls(affine=np.array(volume.affine, dtype=np.float64), canonical_shape=tuple(volume.shape),  # type: ignore[arg-type]
                   resampled_shape=res, padded_shape=pad, native=volume.native)  # type: ignore[arg-type]

    # --- shapes --------------------------------------------------------------------------------
    @property
    def stored_shape(self) -> tuple[int, int, int]:
        shape = self.native.shape[:3] if self.native is not None else self.canonical_shape
        return tuple(int(n) for n in shape)  # type: ignore[return-value]

    @property
    def pad(self) -> tuple[int, int, int]:
        """``(D, H, W)`` voxels of padding at the end of each model axis."""
        return tuple(p - r for p, r in zip(self.padded_shape, self.resampled_shape))  # type: ignore[return-value]

    @property
    def scale(self) -> np.ndarray:
        """``(3,)`` model voxels per canonical voxel along (D, H, W)."""
        return np.asarray(self.resampled_shape, float) / np.asarray(self.canonical_shape[::-1], float)

    # --- points --------------------------------------------------------------------------------
    def _to_canonical_matrix(self, space: Space) -> np.ndarray:
        if space == "canonical":
            return np.eye(4)
        if space == "world":
            return np.linalg.inv(self.affine)
        if space == "stored":
            return np.eye(4) if self.native is None else native_to_canonical_index_affine(self.native)
        if space == "model":
            return np.linalg.inv(self._canonical_to_model_matrix())
        raise InputError(f"unknown coordinate space {space!r}.", "Use 'stored', 'world', 'canonical' or 'model'.")

    def _canonical_to_model_matrix(self) -> np.ndarray:
        s = self.scale
        m = np.diag([*s, 1.0]) @ _REVERSE
        m[:3, 3] = 0.5 * s - 0.5
        return m

    def matrix(self, src: Space, dst: Space) -> np.ndarray:
        """4×4 map from ``src`` to ``dst`` coordinates (homogeneous, column vectors)."""
        to_dst = np.linalg.inv(self._to_canonical_matrix(dst)) if dst != "model" else self._canonical_to_model_matrix()
        return to_dst @ self._to_canonical_matrix(src)

    def convert(self, points: Any, src: Space, dst: Space) -> np.ndarray:
        """Points ``(3,)`` / ``(N, 3)`` from ``src`` to ``dst`` coordinates (continuous, float64)."""
        pts, single = _points(points, "points")
        m = self.matrix(src, dst)
        out = pts @ m[:3, :3].T + m[:3, 3]
        return out[0] if single else out

    def checked_points(self, values: Any, coords: Literal["voxel", "world"], what: str = "point") -> np.ndarray:
        """User points (stored voxel indices or world RAS+ mm) → ``(N, 3)`` canonical, checked inside the image.

        Raises InputError naming the point and the valid range (stored axes, or the grid's mm span).
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"{what} must be three numbers per point, got shape {np.shape(values)}.",
                             "Give (i, j, k) voxel indices or (x, y, z) world mm per point.")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} contains NaN or infinite values: {arr.tolist()}.", "Give finite coordinates.")
        if coords == "voxel":
            check_inside(arr, self.stored_shape)  # names the stored axis and its valid range
            return self.convert(arr, "stored", "canonical")
        if coords != "world":
            raise InputError(f"coords must be 'voxel' or 'world', got {coords!r}.")
        canon = self.convert(arr, "world", "canonical")
        dims = np.asarray(self.canonical_shape)
        outside = np.any((np.rint(canon) < 0) | (np.rint(canon) >= dims), axis=1)
        if outside.any():
            lo, hi = self.convert_box(np.full(3, -0.5), dims - 0.5, "canonical", "world")
            span = ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi))
            raise InputError(
                f"{what} ({', '.join(f'{v:g}' for v in arr[int(np.argmax(outside))])}) mm (world RAS+) is outside "
                f"the image, whose voxels span x, y, z = {span} mm (corner to corner of the grid).",
                "Check the coordinate system: --point-mm takes RAS+ millimetres as 3D Slicer shows them "
                "(DICOM viewers show LPS: negate x and y).")
        return canon

    # --- boxes ---------------------------------------------------------------------------------
    def convert_box(self, lo: Any, hi: Any, src: Space, dst: Space, *, extent: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The smallest ``dst`` box containing the ``src`` box ``[lo, hi]``: all 8 corners mapped.

        ``extent=True``: ``lo``/``hi`` are inclusive voxel indices and so is the result, covering
        the same extent (the voxels' outer faces, half a voxel beyond the centres, are mapped).
        """
        a, b = np.minimum(lo, hi).astype(float), np.maximum(lo, hi).astype(float)
        if extent:
            a, b = a - 0.5, b + 0.5
        corners = np.array([[x, y, z] for x, y, z in itertools.product(*zip(a, b))])
        mapped = self.convert(corners, src, dst)
        out_lo, out_hi = mapped.min(axis=0), mapped.max(axis=0)
        if extent:
            out_lo, out_hi = out_lo + 0.5, np.maximum(out_hi - 0.5, out_lo + 0.5)
        return out_lo, out_hi

    def checked_box(self, box: Any, coords: Literal["voxel", "world"]) -> tuple[np.ndarray, np.ndarray]:
        """A user box (two opposite corners, stored voxels or world mm) → inclusive canonical ``(lo, hi)``."""
        arr = np.asarray(box, dtype=np.float64).reshape(-1)
        if arr.size != 6:
            raise InputError(f"a box needs 6 numbers (two opposite corners i0, j0, k0, i1, j1, k1), got {arr.size}.")
        ends = self.checked_points(arr.reshape(2, 3), coords, "box corner")
        src: Space = "stored" if coords == "voxel" else "world"
        user = self.convert(ends, "canonical", src)
        lo, hi = self.convert_box(user[0], user[1], src, "canonical")
        flat = np.flatnonzero(np.rint(hi) - np.rint(lo) < 1)
        if flat.size:
            ax = int(flat[0])
            raise InputError(f"the box has zero size along canonical axis {ax} ({'RAS'[ax]}): both corners "
                             f"fall on voxel {int(np.rint(lo[ax]))}.",
                             "Give two opposite corners of a box around the object (at least 2 voxels wide "
                             "along every axis).")
        return lo, hi

    # --- windows -------------------------------------------------------------------------------
    def full_window(self) -> Window:
        """The whole padded model grid as a window."""
        return tuple((0, int(n)) for n in self.padded_shape)

    def footprint(self, window: Window) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Canonical voxels whose centres fall inside a model ``window`` and their model positions.

        Returns ``(slices (X, Y, Z), positions per model axis relative to the window start)``, or
        ``None`` when the window holds no canonical voxel centre (e.g. only padding).
        """
        canon_zyx = self.canonical_shape[::-1]
        res = self.resampled_shape
        slices, positions = [], []
        for a in range(3):
            s, e = window[a]
            e = min(e, res[a])  # the padding beyond the resampled grid is not image
            scale = res[a] / canon_zyx[a]
            # canonical c maps to model (c + 0.5) * scale - 0.5; keep those inside [s - 0.5, e - 0.5].
            c0 = max(int(np.ceil(s / scale - 0.5)), 0) if s > 0 else 0
            c1 = min(int(np.floor(e / scale - 0.5)) + 1, canon_zyx[a]) if e < res[a] else canon_zyx[a]
            if c1 <= c0:
                return None
            positions.append((np.arange(c0, c1) + 0.5) * scale - 0.5 - s)
            slices.append(slice(c0, c1))
        return (slices[2], slices[1], slices[0]), positions

    # --- arrays --------------------------------------------------------------------------------
    def to_canonical(self, output: torch.Tensor, *, kind: Literal["label", "continuous"],
                     window: Window | None = None) -> np.ndarray:
        """Model-grid output → the canonical grid (linear resampling, then labels if asked).

        Args:
            output: ``(K, d, h, w)`` or ``(d, h, w)`` (= K of 1) on ``window`` of the padded model
                grid (default: the whole padded grid).
            kind: ``"label"``: scores/logits per class (K ≥ 2, argmax) or one foreground logit
                (K = 1, ``> 0``), resampled before the decision (smoother than resampling labels);
                returns ``(X, Y, Z)`` uint8. ``"continuous"``: images or fields, returned as
                ``(X, Y, Z, K)`` float32, or ``(X, Y, Z)`` when K = 1.
            window: the model window the output covers; canonical voxels outside it are 0.
        """
        x = output.float()
        x = x[None] if x.ndim == 3 else x
        window = window or self.full_window()
        k = int(x.shape[0])
        shape = self.canonical_shape if kind == "label" or k == 1 else (*self.canonical_shape, k)
        out = np.zeros(shape, dtype=np.uint8 if kind == "label" else np.float32)
        foot = self.footprint(window)
        if foot is None:
            return out
        slices, positions = foot
        # the window's image part: the padding beyond the resampled grid is never interpolated from
        x = x[(slice(None), *(slice(0, min(e, r) - s) for (s, e), r in zip(window, self.resampled_shape)))]
        for a in range(3):
            x = _resample_axis(x, a + 1, positions[a])
        if kind == "label":
            lab = (x[0] > 0) if k == 1 else x.argmax(0)
            out[slices] = model_to_canonical(lab.to(torch.uint8).numpy())
        elif k == 1:
            out[slices] = model_to_canonical(x[0].numpy())
        else:
            out[slices] = model_to_canonical(x.numpy(), channels="last")
        return out

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """A canonical ``(X, Y, Z[, C])`` array in the file's stored voxel order (exact: flips/permutes only)."""
        return np.ascontiguousarray(array) if self.native is None else to_native(array, self.native)
