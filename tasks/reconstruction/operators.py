"""Forward models: Cartesian MRI (fastMRI ``fft2c``), coil sensitivities, masks, parallel-beam Radon.

Why the FFT is written here and not taken from deepinv: deepinv 0.5 installs beside the pinned
``torch==2.13.0`` (``pip install --dry-run -c constraints-cpu.txt torch==2.13.0 deepinv`` resolves),
but it brings back torchvision (whose compiled ops do not load beside this CPU torch, see
docs/install.md), torchmetrics and einops, for what is, in the fastMRI convention the file format
fixes, five lines of ``torch.fft``. Coil maps for simulation come from sigpy
(:func:`sigpy.mri.birdcage_maps`); the Radon transform and FBP are scikit-image's
(``radon``/``iradon``, ``circle=True``), the units convention of the CT file format.

Conventions: complex tensors ``(..., H, W)``; k-space is centred (DC at ``(H // 2, W // 2)``);
masks are ``(W,)`` column masks (1 = acquired) broadcast over rows, as in fastMRI test files.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "adjoint", "estimate_sensitivities", "fbp", "fft2c", "forward", "ifft2c", "make_mask",
    "radon", "rss", "simulated_coil_maps", "smooth_phase",
]


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (fastMRI: ifftshift → fft2 → fftshift)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (ifftshift → ifft2 → fftshift)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


def forward(x: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A x = M F (S x)``: image ``(B, H, W)`` → masked coil k-space ``(B, C, H, W)``.

    ``sens`` is ``(B, C, H, W)`` (single-coil: ``C = 1`` and all ones); ``mask`` ``(B, 1, 1, W)``.
    """
    return mask * fft2c(sens * x[:, None])


def adjoint(k: torch.Tensor, sens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Aᴴ k = Σ_c S_cᴴ Fᴴ (M k_c)``: coil k-space ``(B, C, H, W)`` → image ``(B, H, W)``."""
    return (sens.conj() * ifft2c(mask * k)).sum(dim=1)


def rss(coil_images: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root sum of squares over the coil axis (the magnitude image fastMRI reports)."""
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim))


def center_columns(mask: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """``[lo, hi)`` of the contiguous run of acquired columns around the centre ``W // 2``."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).reshape(-1) > 0
    c = m.size // 2
    if not m[c]:
        return c, c
    lo, hi = c, c + 1
    while lo > 0 and m[lo - 1]:
        lo -= 1
    while hi < m.size and m[hi]:
        hi += 1
    return lo, hi


def estimate_sensitivities(kspace: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Coil maps from the fully sampled centre (the initial estimate of E2E-VarNet, without its U-Net).

    The low-resolution coil images of the central (ACS) columns, divided by their root sum of
    squares, so ``Σ_c |S_c|² = 1``. ``kspace`` ``(B, C, H, W)``; ``mask`` ``(W,)`` (shared by the
    batch). Single-coil input gives all-ones maps (phase taken by the image).
    """
    _b, c, _h, _w = kspace.shape
    if c == 1:
        return torch.ones_like(kspace)
    lo, hi = center_columns(mask)
    if hi - lo < 2:
        raise ValueError("the mask has no fully sampled centre to estimate coil sensitivities from")
    acs = torch.zeros_like(kspace)
    win = torch.hann_window(hi - lo + 2, periodic=False, dtype=torch.float32, device=kspace.device)[1:-1]
    acs[..., lo:hi] = kspace[..., lo:hi] * win
    low = ifft2c(acs)
    return low / (rss(low)[:, None] + eps * rss(low).amax(dim=(-2, -1), keepdim=True)[:, None])


def make_mask(width: int, acceleration: int, center_fraction: float, kind: str,
              rng: np.random.Generator) -> np.ndarray:
    """A fastMRI-style column mask ``(W,)`` float32: fully sampled centre + random or equispaced lines.

    ``kind="random"``: each outer column with the probability that gives ``W / acceleration``
    columns on average (fastMRI ``RandomMaskFunc``); ``"equispaced"``: every ``a``-th column from a
    random offset, ``a`` adjusted for the centre (``EquispacedMaskFractionFunc``).
    """
    if kind not in ("random", "equispaced"):
        raise ValueError(f"mask kind must be 'random' or 'equispaced', got {kind!r}")
    num_low = round(width * center_fraction)
    mask = np.zeros(width, dtype=np.float32)
    pad = (width - num_low + 1) // 2
    mask[pad:pad + num_low] = 1
    if kind == "random":
        prob = (width / acceleration - num_low) / max(width - num_low, 1)
        mask[rng.uniform(size=width) < prob] = 1
    else:
        adjusted = (acceleration * (num_low - width)) / (num_low * acceleration - width)
        offset = int(rng.integers(0, max(round(adjusted), 1)))
        mask[np.around(np.arange(offset, width - 1, adjusted)).astype(np.int64)] = 1
    return mask


def simulated_coil_maps(ncoils: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """SIMULATED coil maps ``(C, H, W)`` complex64 with ``Σ|S|² = 1``: sigpy birdcage maps, randomly
    rotated and scaled (relative radius 1.2–2), so each training slice sees another coil layout."""
    import sigpy.mri

    r = float(rng.uniform(1.2, 2.0))
    maps = sigpy.mri.birdcage_maps((ncoils, *shape), r=r, nzz=ncoils).astype(np.complex64)
    maps *= np.exp(1j * rng.uniform(0, 2 * np.pi)).astype(np.complex64)
    k = int(rng.integers(0, 4))
    maps = np.rot90(maps, k, axes=(1, 2)) if shape[0] == shape[1] else maps
    maps = maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0, keepdims=True) + 1e-12)
    return np.ascontiguousarray(maps, dtype=np.complex64)


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, max_rad: float = np.pi) -> np.ndarray:
    """A SIMULATED smooth random phase map ``(H, W)`` (float32 radians): a random 2nd-order polynomial
    plus a low-pass random field, as B0/receive phase varies slowly across an image."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    c = rng.normal(size=6) * np.array([1, 0.8, 0.8, 0.3, 0.3, 0.3])
    poly = c[0] + c[1] * xx + c[2] * yy + c[3] * xx * yy + c[4] * xx**2 + c[5] * yy**2
    noise = np.fft.ifft2(np.fft.fft2(rng.normal(size=shape)) * np.exp(-(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None] ** 2) / 0.002)).real
    noise /= np.abs(noise).max() + 1e-12
    phase = poly + noise
    phase = phase / (np.abs(phase).max() + 1e-12) * max_rad * rng.uniform(0.3, 1.0)
    return phase.astype(np.float32)


# ----------------------------------------------------------------------------- CT (scikit-image)
def radon(mu: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Parallel-beam sinogram ``(views, detectors)`` of a square image in μ/μ_water, detectors = width
    (``skimage.transform.radon(image, theta, circle=True)``; pixels outside the circle must be 0)."""
    from skimage.transform import radon as sk_radon

    return sk_radon(mu.astype(np.float64), theta=np.asarray(angles_deg, np.float64), circle=True).T.astype(np.float32)


def fbp(sinogram: np.ndarray, angles_deg: np.ndarray, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of a ``(views, detectors)`` sinogram (``skimage.transform.iradon``)."""
    from skimage.transform import iradon

    n = sinogram.shape[1]
    return iradon(sinogram.T.astype(np.float64), theta=np.asarray(angles_deg, np.float64), filter_name=filter_name,
                  circle=True, output_size=n).astype(np.float32)
