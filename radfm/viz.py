"""Pictures a person looks at: slice overlays and curves written as PNG.

Why matplotlib with the Agg backend: it runs headless on any machine and writes PNGs that
HTML pages (the demo, benchmark docs) embed. Arrays are canonical (X, Y, Z) RAS+; slices are
shown in radiological convention (patient right on the image left, anterior/superior up).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

_PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}


def slice_2d(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A display-ready 2D slice (rows top→bottom, columns left→right) of a canonical array."""
    axis = _PLANES[plane]
    sl = np.take(array, index, axis=axis)
    # remaining axes: axial (X, Y), coronal (X, Z), sagittal (Y, Z); put the vertical axis
    # (Y for axial, Z otherwise) first and flip it so anterior/superior is up.
    img = np.flipud(sl.T)
    if plane in ("axial", "coronal"):
        img = np.fliplr(img)  # radiological convention: patient right on screen left
    return img


def window_for(array: np.ndarray, modality: str) -> tuple[float, float]:
    """Display window: soft-tissue window for CT, robust percentiles otherwise."""
    if modality == "CT":
        return -160.0, 240.0
    lo, hi = np.percentile(array, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    modality: str = "unknown",
    center: Sequence[int] | None = None,
    points: Sequence[tuple[Sequence[float], bool]] = (),
    title: str = "",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """Three orthogonal slices through ``center`` with a label overlay and click markers.

    ``image``/``mask`` are canonical (X, Y, Z); ``points`` are canonical voxel indices with
    a foreground flag. Pixel aspect follows ``spacing`` (mm) so anisotropic scans look right.
    """
    if center is None:
        if mask is not None and mask.any():
            center = [round(c) for c in np.argwhere(mask).mean(0)]
        else:
            center = [s // 2 for s in image.shape[:3]]
    vmin, vmax = window_for(image, modality)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=90)
    aspects = {"axial": spacing[1] / spacing[0], "coronal": spacing[2] / spacing[0],
               "sagittal": spacing[2] / spacing[1]}
    for ax, plane in zip(axes, ("axial", "coronal", "sagittal")):
        idx = int(center[_PLANES[plane]])
        ax.imshow(slice_2d(image, plane, idx), cmap="gray", vmin=vmin, vmax=vmax, aspect=aspects[plane],
                  interpolation="nearest")
        if mask is not None:
            m = slice_2d(mask, plane, idx)
            if m.any():
                cm = plt.get_cmap("tab20", max(int(mask.max()) + 1, 2))
                rgba = cm(m.astype(int) % cm.N)
                rgba[..., 3] = np.where(m > 0, 0.45, 0.0)
                ax.imshow(rgba, aspect=aspects[plane], interpolation="nearest")
                ax.contour(m > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        for p, positive in points:
            if round(float(p[_PLANES[plane]])) != idx:
                continue
            r, c = _display_rc(p, plane, image.shape[:3])
            ax.plot(c, r, marker="*", markersize=13, color="lime" if positive else "red", markeredgecolor="k")
        ax.set_title(f"{plane} {idx}")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def _display_rc(p: Sequence[float], plane: str, shape: Sequence[int]) -> tuple[float, float]:
    """Row/column of canonical voxel ``p`` in ``slice_2d``'s display of ``plane``."""
    x, y, z = p
    nx, ny, nz = shape
    if plane == "axial":
        return ny - 1 - y, nx - 1 - x
    if plane == "coronal":
        return nz - 1 - z, nx - 1 - x
    return nz - 1 - z, y


def _save_figure(fig: matplotlib.figure.Figure, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; closing matters in long loops,
    where matplotlib would otherwise keep every figure alive."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_curve(path: str | Path, xs: Sequence[float], series: dict[str, Sequence[float]], *,
               xlabel: str, ylabel: str, title: str = "") -> Path:
    """A line plot of one or more named series (loss curves, Dice vs clicks)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for name, ys in series.items():
        ax.plot(list(xs)[: len(ys)], list(ys), marker="o" if len(ys) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return _save_figure(fig, path)
