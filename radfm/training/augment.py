"""Augmentations for self-supervised pretraining, in torch on ``(C, D, H, W)`` model-order tensors.

Why our own few functions instead of MONAI transforms: pretraining draws thousands of crops
from a small pool of volumes, so each crop must be cheap and every random draw must come from
one seeded ``torch.Generator`` (a resumed or distributed run replays exactly). Each function is
pure (tensor in, tensor out); :func:`augment_crop` chains them as configured.

Intensities arrive already normalised by ``radfm.preprocess.plan.normalize_intensity`` (CT:
window to [-1, 1]; MR: percentiles to [-1, 1]) — the function inference uses — so the
intensity augmentations below perturb around the range the model will see later.

Axes: ``(D, H, W)`` = canonical ``(z, y, x)``; left-right is ``W`` (canonical X, RAS+).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "augment_crop",
    "center_crop",
    "gaussian_blur",
    "random_crop",
    "random_gamma",
]


@dataclass
class AugmentConfig:
    """What :func:`augment_crop` does to each training crop (probabilities per crop).

    Attributes:
        enabled: ``False`` = plain random crops (no resampling, flips or intensity changes).
        zoom: range of the isotropic scale of the region cropped before it is resampled to the
            crop size: 1.25 reads a 25 % larger region (coarser voxels). This is the spacing
            jitter: the encoder sees anatomy at slightly different voxel sizes.
        anisotropy: extra independent per-axis scale in ``[1 - a, 1 + a]`` (slice-thickness jitter).
        zoom_p: probability of resampling at all (else a crop at the volume's own spacing).
        flip_lr_p: probability of a left-right mirror (anatomy is roughly symmetric in L-R only).
        scale, shift: ranges of ``x * scale + shift`` (scanner gain / window offsets).
        intensity_p: probability of that scale/shift.
        gamma, gamma_p: range and probability of a gamma curve applied to the crop rescaled to [0, 1].
        noise_std, noise_p: range of the std (normalised units) and probability of Gaussian noise.
        blur_sigma, blur_p: range of the std (voxels) and probability of a Gaussian blur (PSF).
        min_foreground: a crop is redrawn (up to 5 times) while fewer than this fraction of its
            voxels lie clearly above the volume's background, so batches are not mostly air.
    """

    enabled: bool = True
    zoom: tuple[float, float] = (0.8, 1.25)
    anisotropy: float = 0.1
    zoom_p: float = 0.7
    flip_lr_p: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    shift: tuple[float, float] = (-0.1, 0.1)
    intensity_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    gamma_p: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.03)
    noise_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_p: float = 0.2
    min_foreground: float = 0.2


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=g)) < p


def random_crop(
    volume: torch.Tensor,
    crop_size: tuple[int, int, int],
    g: torch.Generator,
    *,
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    background: float | None = None,
    min_foreground: float = 0.0,
    tries: int = 5,
) -> torch.Tensor:
    """A random ``crop_size`` crop of ``volume`` ``(C, D, H, W)``, read from a region ``scale``
    times larger per axis and resampled (trilinear) to ``crop_size``.

    Axes shorter than the region are padded with ``background`` (default: the volume's minimum,
    i.e. air after normalisation). Returns ``(C, *crop_size)`` float32.
    """
    bg = float(volume.amin()) if background is None else float(background)
    region = tuple(max(1, round(c * s)) for c, s in zip(crop_size, scale))
    pad = [max(0, r - n) for r, n in zip(region, volume.shape[1:])]
    if any(pad):  # centre the volume in the padded region (F.pad lists the last axis first)
        spec: list[int] = []
        for p in reversed(pad):
            spec += [p // 2, p - p // 2]
        volume = F.pad(volume, spec, value=bg)
    threshold = bg + 0.1  # "clearly above air" in normalised units (CT -900 HU, MR low percentiles)
    crop = volume
    for _ in range(max(1, tries)):
        starts = [int(torch.randint(0, n - r + 1, (), generator=g)) for n, r in zip(volume.shape[1:], region)]
        crop = volume[:, starts[0]:starts[0] + region[0], starts[1]:starts[1] + region[1],
                      starts[2]:starts[2] + region[2]]
        if min_foreground <= 0 or float((crop > threshold).float().mean()) >= min_foreground:
            break
    if tuple(crop.shape[1:]) != tuple(crop_size):
        crop = F.interpolate(crop[None].float(), size=tuple(crop_size), mode="trilinear", align_corners=False)[0]
    return crop.float().contiguous()


def center_crop(volume: torch.Tensor, crop_size: tuple[int, int, int], *, background: float | None = None
                ) -> torch.Tensor:
    """The central ``crop_size`` crop of ``(C, D, H, W)``, padded with ``background`` (default: the
    minimum) where the volume is smaller. Returns ``(C, *crop_size)`` float32."""
    bg = float(volume.amin()) if background is None else float(background)
    pad = [max(0, c - n) for c, n in zip(crop_size, volume.shape[1:])]
    if any(pad):
        spec: list[int] = []
        for p in reversed(pad):
            spec += [p // 2, p - p // 2]
        volume = F.pad(volume, spec, value=bg)
    s = [(n - c) // 2 for n, c in zip(volume.shape[1:], crop_size)]
    return volume[:, s[0]:s[0] + crop_size[0], s[1]:s[1] + crop_size[1], s[2]:s[2] + crop_size[2]].float().contiguous()


def random_gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gamma curve on ``x`` rescaled to [0, 1] by its own range, then mapped back to that range."""
    lo, hi = x.amin(), x.amax()
    span = (hi - lo).clamp_min(1e-6)
    return ((x - lo) / span).clamp(0, 1).pow(gamma) * span + lo


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, D, H, W)`` with std ``sigma`` voxels (replicate padding)."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = x[None]  # (1, C, D, H, W)
    c = x.shape[0]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape).expand(c, 1, *shape[2:]), groups=c)
    return out[0]


def augment_crop(
    volume: torch.Tensor, crop_size: tuple[int, int, int], cfg: AugmentConfig, g: torch.Generator
) -> torch.Tensor:
    """One augmented training crop: ``(C, D, H, W)`` normalised volume -> ``(C, *crop_size)`` float32.

    The order follows acquisition physics: geometry (region, spacing jitter, L-R flip) first,
    then scanner-like intensity changes (gain/offset, gamma), then blur and noise last.
    """
    if not cfg.enabled:
        return random_crop(volume, crop_size, g, min_foreground=0.0)
    scale = (1.0, 1.0, 1.0)
    if _chance(g, cfg.zoom_p):
        iso = math.exp(_uniform(g, math.log(cfg.zoom[0]), math.log(cfg.zoom[1])))
        scale = tuple(iso * _uniform(g, 1.0 - cfg.anisotropy, 1.0 + cfg.anisotropy) for _ in range(3))  # type: ignore[assignment]
    x = random_crop(volume, crop_size, g, scale=scale, min_foreground=cfg.min_foreground)
    if _chance(g, cfg.flip_lr_p):
        x = x.flip(-1)
    if _chance(g, cfg.intensity_p):
        x = x * _uniform(g, *cfg.scale) + _uniform(g, *cfg.shift)
    if _chance(g, cfg.gamma_p):
        x = random_gamma(x, _uniform(g, *cfg.gamma))
    if _chance(g, cfg.blur_p):
        x = gaussian_blur(x, _uniform(g, *cfg.blur_sigma))
    if _chance(g, cfg.noise_p):
        x = x + torch.randn(x.shape, generator=g) * _uniform(g, *cfg.noise_std)
    return x.contiguous()
