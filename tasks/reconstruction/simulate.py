"""Training and benchmark data: real images, SIMULATED raw data.

No real raw k-space or sinogram exists in ``../shared/data`` (its MANIFEST says so), so every raw
sample here is simulated from a REAL image: MRI magnitude slices get a smooth random phase,
SIMULATED birdcage coil maps (multi-coil) and a fastMRI-style column mask; CT slices in HU become
μ/μ_water, go through scikit-image's parallel-beam Radon transform, get Poisson counts at a stated
incident intensity ``I0`` and are log-transformed back. No thermal noise is added to k-space.

Splits are by volume (subject), written down here once, used by the recipes, the tests and
``radfm bench reconstruction``:

* MR train: the VoxelMorph T1 brain, the MNI152 template, the pyradiomics breast MR;
  val: Colin27 (``ants/ch2``); test: the pyradiomics brain-tumour MR (``brain1``), never trained on.
* CT train: pyradiomics ``lung1``, TotalSegmentator ``example_ct`` and ``aorta_ct_cropped``;
  val: the CQ500 head slice and the Pancreas-CT slice (``dicom/``); test: pyradiomics ``lung2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radfm.errors import ConfigError
from radfm.tasks.reconstruction import operators as ops

__all__ = ["CT_SPLITS", "MR_SPLITS", "MU_WATER_PER_MM", "CTSlice", "ct_slices", "mr_slices",
           "simulate_ct", "simulate_mri_batch"]

MR_SPLITS: dict[str, list[str]] = {
    "train": ["seg3d/voxelmorph_brain/test_scan_uint8.npz", "registration/ants/mni.nii.gz",
              "seg3d/pyradiomics/breast1_image.nrrd"],
    "val": ["registration/ants/ch2.nii.gz"],
    "test": ["seg3d/pyradiomics/brain1_image.nrrd"],
}
CT_SPLITS: dict[str, list[str]] = {
    "train": ["seg3d/pyradiomics/lung1_image.nrrd", "seg3d/totalsegmentator/example_ct.nii.gz",
              "seg3d/totalsegmentator/aorta_ct_cropped.nii.gz"],
    "val": ["dicom/693_UNCR.dcm", "dicom/explicit_VR-UN.dcm"],
    "test": ["seg3d/pyradiomics/lung2_image.nrrd"],
}
#: Linear attenuation of water near 70 keV (0.192 /cm), turning μ/μ_water line integrals into counts.
MU_WATER_PER_MM = 0.0192


def _root(root: str | Path | None) -> Path:
    from radfm.data.shared import shared_data_root

    r = shared_data_root(root)
    if r is None or not r.is_dir():
        raise ConfigError("the shared data folder (../shared/data) was not found.",
                          "Set RADFM_SHARED_DATA to the folder that holds seg3d/, registration/ and dicom/.")
    return r


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real volume as (X, Y, Z) float32 + spacing; the VoxelMorph npz has no header (1 mm)."""
    if not path.is_file():
        raise ConfigError(f"real volume {path} is missing.", "Check ../shared/data (see its MANIFEST.md).")
    if path.suffix == ".npz":
        return np.load(path)["vol"].astype(np.float32) / 255.0, (1.0, 1.0, 1.0)
    from radfm.io import load_volume

    v = load_volume(path)
    return np.asarray(v.array, dtype=np.float32), tuple(float(s) for s in v.spacing)


def mr_slices(split: str, root: str | Path | None = None, *, per_axis: int = 24, axes: tuple[int, ...] = (0, 1, 2),
              min_fill: float = 0.15) -> list[np.ndarray]:
    """Real MR magnitude slices of ``split``, each scaled so its 99.5th percentile is 1.

    From every volume, up to ``per_axis`` evenly spaced slices along each of ``axes`` (only the
    axes whose in-plane size is >= 32), keeping slices where >= ``min_fill`` of pixels hold signal.
    Thin volumes (brain1: 25 slices) give their in-plane (axial) slices only.
    """
    out: list[np.ndarray] = []
    for rel in MR_SPLITS[split]:
        vol, _ = _load(_root(root) / rel)
        for ax in axes:
            plane = [n for i, n in enumerate(vol.shape) if i != ax]
            if min(plane) < 32:
                continue
            n = vol.shape[ax]
            for i in np.unique(np.linspace(0.15 * n, 0.85 * n, per_axis).astype(int)):
                s = np.take(vol, int(i), axis=ax).T  # rows = y, columns = x
                hi = float(np.percentile(s, 99.5))
                if hi <= 0 or (s > 0.1 * hi).mean() < min_fill:
                    continue
                out.append(np.ascontiguousarray(np.clip(s / hi, 0, 1.5), dtype=np.float32))
    if not out:
        raise ConfigError(f"no usable MR slice in split {split!r}.")
    return out


@dataclass
class CTSlice:
    """A real CT slice resampled to ``size``² over its field of view: HU and the pixel size in mm."""

    hu: np.ndarray
    pixel_mm: float
    source: str


def ct_slices(split: str, root: str | Path | None = None, *, size: int = 256, per_volume: int = 40) -> list[CTSlice]:
    """Real axial CT slices of ``split`` (up to ``per_volume`` evenly spaced per volume), resized to
    ``size``² (anti-aliased), with air outside the reconstruction circle (skimage ``circle=True``)."""
    from skimage.transform import resize

    out: list[CTSlice] = []
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    inside = (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    for rel in CT_SPLITS[split]:
        vol, sp = _load(_root(root) / rel)
        n = vol.shape[2]
        idx = np.unique(np.linspace(0.1 * n, 0.9 * n, per_volume).astype(int)) if n > 1 else [0]
        for i in idx:
            s = vol[:, :, int(i)].T
            side = max(s.shape)
            pad = np.full((side, side), -1000.0, np.float32)  # square FOV, air padding
            r0, c0 = (side - s.shape[0]) // 2, (side - s.shape[1]) // 2
            pad[r0:r0 + s.shape[0], c0:c0 + s.shape[1]] = np.clip(s, -1000, 3000)
            hu = resize(pad, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)
            hu[~inside] = -1000.0
            out.append(CTSlice(hu, float(side * max(sp[0], sp[1]) / size), f"{Path(rel).name}[{int(i)}]"))
    return out


def simulate_ct(sl: CTSlice, views: int, i0: float | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SIMULATED parallel-beam sinogram ``(views, size)`` (relative_to_water) over 180° and its angles.

    ``i0`` photons per detector bin (Poisson counts, then ``-log``); ``None`` leaves the sinogram
    noise-free. Counts of 0 are set to 0.5 before the log, as scanners floor them.
    """
    angles = np.linspace(0.0, 180.0, views, endpoint=False).astype(np.float32)
    mu = np.clip((sl.hu + 1000.0) / 1000.0, 0.0, None)
    sino = ops.radon(mu, angles)
    if i0 is not None:
        per_px = MU_WATER_PER_MM * sl.pixel_mm
        counts = rng.poisson(i0 * np.exp(-sino.astype(np.float64) * per_px)).astype(np.float64)
        sino = (-np.log(np.maximum(counts, 0.5) / i0) / per_px).astype(np.float32)
    return sino, angles


def simulate_mri_batch(images: list[np.ndarray], rng: np.random.Generator, *, crop: int, coils: int,
                       accelerations: tuple[int, ...] = (4, 8), mask_kinds: tuple[str, ...] = ("random", "equispaced"),
                       ) -> dict[str, torch.Tensor]:
    """One batch of SIMULATED k-space from real magnitude slices (one coil count per batch).

    Each image: random crop/pad to ``crop``², random flip, smooth random phase, birdcage coil maps
    (``coils > 1``; ``Σ|S|² = 1``, so the RSS of the coil images is the magnitude target), centred
    orthonormal FFT, and a mask (acceleration and kind drawn from the lists; centre fraction
    0.08 at 4×, 0.04 at 8×, fastMRI's). Returns ``kspace`` (B, C, H, W) complex64 (masked),
    ``mask`` (B, W) float32 and ``target`` (B, H, W) float32 magnitude.
    """
    ks, masks, targets = [], [], []
    for img in images:
        h, w = img.shape
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        r = int(rng.integers(0, img.shape[0] - crop + 1))
        c = int(rng.integers(0, img.shape[1] - crop + 1))
        m = img[r:r + crop, c:c + crop]
        if rng.uniform() < 0.5:
            m = m[:, ::-1]
        m = np.ascontiguousarray(m, dtype=np.float32)
        x = m * np.exp(1j * ops.smooth_phase(m.shape, rng))
        coil = ops.simulated_coil_maps(coils, m.shape, rng) * x[None] if coils > 1 else x[None]
        acc = int(rng.choice(accelerations))
        mask = ops.make_mask(crop, acc, 0.08 if acc <= 4 else 0.04, str(rng.choice(mask_kinds)), rng)
        k = ops.fft2c(torch.from_numpy(np.ascontiguousarray(coil, dtype=np.complex64)))
        ks.append(k * torch.from_numpy(mask))
        masks.append(torch.from_numpy(mask))
        targets.append(torch.from_numpy(m))
    return {"kspace": torch.stack(ks), "mask": torch.stack(masks), "target": torch.stack(targets)}
