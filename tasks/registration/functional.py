"""Pure functions on dense displacement fields (VoxelMorph's ``nn/functional.py`` counterpart).

The field convention, stated once for the whole task (the same as ``radfm.data.deform``,
VoxelMorph's ``SpatialTransformer`` and MONAI's ``Warp``)::

    warped(x) = moving(x + u(x))

``u`` lives on the FIXED grid and is a displacement in VOXELS of that grid. Inside models
tensors are ``(B, C, D, H, W)`` and fields ``(B, 3, D, H, W)`` whose channel ``a`` is the
displacement along spatial axis ``a`` of the tensor, i.e. ``(dz, dy, dx)`` for
``(D, H, W) = (z, y, x)``. ``radfm.data.deform.field_canonical_to_model`` converts canonical
``(3, X, Y, Z)`` numpy fields into this order (it transposes the grid AND reverses the
channels). User-facing fields (millimetres, world axes) are made in ``api.py`` only.

Composition reads left to right: ``compose(u, v)`` is the field of "warp by ``u``, then warp the
result by ``v``", so ``warp(warp(m, u), v) == warp(m, compose(u, v))`` up to interpolation.

Nothing here holds state or parameters; ``model.py`` and ``losses.py`` wrap these functions.
:func:`warp` computes exactly what MONAI's ``Warp`` computes (``grid_sample`` with
``align_corners=True``; a test compares them) but caches the identity grid per shape: a
coarse-to-fine decoder warps at five grid sizes per forward, and MONAI's single cached grid
was rebuilt on every call.
Warping always runs in float32 with autocast disabled: a bf16 sampling grid has 8 mantissa bits,
i.e. errors of a whole voxel at index 200.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from radfm.errors import InputError

__all__ = [
    "affine_ddf",
    "compose",
    "identity_grid",
    "integrate_velocity",
    "invert",
    "jacobian_determinant",
    "local_correlation",
    "matrix_canonical_to_model",
    "resample",
    "resize_field",
    "warp",
]

WarpMode = Literal["linear", "nearest"]
Padding = Literal["border", "zeros"]


# ----------------------------------------------------------------------------- warping
@lru_cache(maxsize=8)
def _base_grid(shape: tuple[int, int, int], device: str, dtype: torch.dtype) -> torch.Tensor:
    """Identity sampling grid of ``grid_sample`` (``align_corners=True``), ``(1, D, H, W, 3)`` in (x, y, z)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else
            torch.full((1,), -1.0, device=device, dtype=dtype) for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)[None]


def _check_field(image: torch.Tensor, ddf: torch.Tensor) -> None:
    if image.ndim != 5 or ddf.ndim != 5:
        raise InputError(
            f"warp expects a (B, C, D, H, W) image and a (B, 3, D, H, W) field, got {tuple(image.shape)} and "
            f"{tuple(ddf.shape)}.",
            "Add batch/channel axes (x[None, None]) and use 3D volumes.",
        )
    if ddf.shape[1] != 3 or ddf.shape[2:] != image.shape[2:] or ddf.shape[0] not in (1, image.shape[0]):
        raise InputError(
            f"field shape {tuple(ddf.shape)} does not fit image shape {tuple(image.shape)}.",
            "The field must be (B, 3, D, H, W) on the image's grid, in voxels.",
        )


def warp(image: torch.Tensor, ddf: torch.Tensor, *, mode: WarpMode = "linear",
         padding: Padding = "border") -> torch.Tensor:
    """Resample ``image`` at ``x + ddf(x)``: ``out(x) = image(x + u(x))``.

    Args:
        image: ``(B, C, D, H, W)``; floating for ``mode="linear"``; a label map (integer or bool
            dtype) must use ``mode="nearest"`` and comes back with its dtype and label values.
        ddf: ``(B, 3, D, H, W)`` displacement in voxels, channels ``(dz, dy, dx)``; batch 1
            broadcasts over the image batch.
        mode: "linear" (trilinear, images and fields) or "nearest" (label maps).
        padding: value outside the grid: "border" (nearest edge value; right for fields and
            for images whose border is background) or "zeros".

    Returns:
        ``(B, C, D, H, W)``, float32 for floating input (float64 stays float64).
    """
    _check_field(image, ddf)
    if mode not in ("linear", "nearest"):
        raise InputError(f"warp mode must be 'linear' or 'nearest', got {mode!r}.")
    is_label = not image.is_floating_point()
    if is_label and mode != "nearest":
        raise InputError(
            f"a {image.dtype} label map cannot be warped with linear interpolation.",
            "Use mode='nearest' for labels (or warp a float one-hot encoding for soft labels).",
        )
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    if ddf.shape[0] != image.shape[0]:
        ddf = ddf.expand(image.shape[0], -1, -1, -1, -1)
    shape = tuple(int(n) for n in ddf.shape[2:])
    with torch.autocast(image.device.type, enabled=False):
        # voxels -> grid_sample's [-1, 1] (align_corners=True: -1 and 1 are the edge voxel centres);
        # channels (dz, dy, dx) -> grid order (x, y, z). Same arithmetic as MONAI's Warp, with the
        # identity grid cached per shape (MONAI rebuilds it whenever the shape changes).
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=dtype, device=ddf.device)
        offset = (ddf.to(dtype) * scale.view(1, 3, 1, 1, 1)).permute(0, 2, 3, 4, 1).flip(-1)
        grid = _base_grid(shape, str(ddf.device), dtype) + offset
        out = F.grid_sample(image.to(dtype), grid, mode="bilinear" if mode == "linear" else "nearest",
                            padding_mode=padding, align_corners=True)
    if is_label:
        return out.round().to(image.dtype)
    return out


def resample(image: torch.Tensor, coords: torch.Tensor, *, mode: WarpMode = "linear",
             padding: Padding = "zeros") -> torch.Tensor:
    """Sample ``image`` at voxel positions of ITS OWN grid: ``out(x) = image(coords(x))``.

    Args:
        image: ``(B, C, d, h, w)`` float.
        coords: ``(B, 3, D, H, W)`` positions ``(z, y, x)`` in voxels of ``image`` (any output grid).
        mode, padding: as in :func:`warp`.

    Returns:
        ``(B, C, D, H, W)`` float32. Why beside :func:`warp`: with different fixed and moving grids
        the positions come from ``inv(A_moving) @ A_fixed`` and live on another grid than the image.
    """
    if image.ndim != 5 or coords.ndim != 5 or coords.shape[1] != 3:
        raise InputError(f"resample expects (B, C, d, h, w) and (B, 3, D, H, W), got {tuple(image.shape)} and "
                         f"{tuple(coords.shape)}.")
    with torch.autocast(image.device.type, enabled=False):
        scale = torch.tensor([2.0 / max(n - 1, 1) for n in image.shape[2:]], dtype=torch.float32,
                             device=coords.device)
        grid = (coords.float() * scale.view(1, 3, 1, 1, 1) - 1.0).permute(0, 2, 3, 4, 1).flip(-1)
        return F.grid_sample(image.float(), grid, mode="bilinear" if mode == "linear" else "nearest",
                             padding_mode=padding, align_corners=True)


def identity_grid(shape: Sequence[int], *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel index of every voxel: ``(1, 3, D, H, W)`` with channels ``(z, y, x)``."""
    axes = [torch.arange(int(s), device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


# ----------------------------------------------------------------------------- field algebra
def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Field of "warp by ``u``, then by ``v``": ``w(x) = v(x) + u(x + v(x))``. All ``(B, 3, D, H, W)``.

    Why this order: ``warp(warp(m, u), v)(x) = warp(m, u)(x + v(x)) = m(x + v(x) + u(x + v(x)))``;
    coarse-to-fine decoders warp with the coarse ``u`` and then predict the residual ``v``.
    """
    return v + warp(u, v, mode="linear", padding="border")


def integrate_velocity(svf: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(svf)``, ``(B, 3, D, H, W)`` voxels.

    ``svf / 2**steps`` is small enough to be a near-identity map; squaring it ``steps`` times
    (``u <- compose(u, u)``) gives the time-1 flow of the stationary velocity field. The result
    is diffeomorphic up to interpolation error when the velocity is smooth (VoxelMorph-diff,
    Arsigny et al. 2006). The same recursion as MONAI's ``DVF2DDF`` (tests check they agree) but
    with border padding (a field's value beyond the edge is best guessed by the edge, not by
    MONAI's default zero) and the cached grid of :func:`warp`, in float32.
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}.")
    if steps == 0:
        return svf
    with torch.autocast(svf.device.type, enabled=False):
        u = svf.float() / 2**steps
        for _ in range(steps):
            u = u + warp(u, u, mode="linear", padding="border")
    return u


def invert(u: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Approximate inverse field by fixed-point iteration ``w <- -u(x + w(x))``.

    ``compose(u, invert(u))`` is close to zero (the identity) where ``x + u(x)`` is invertible
    and stays inside the grid; the error shrinks geometrically when ``|∇u| < 1`` (Chen et al.
    2008). For an SVF model the exact inverse is cheaper: ``integrate_velocity(-svf)``.
    """
    w = -u
    for _ in range(max(iters, 0)):
        w = -warp(u, w, mode="linear", padding="border")
    return w


def resize_field(u: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a voxel field to another grid over the same extent, rescaling its values.

    ``(B, 3, d, h, w)`` -> ``(B, 3, *size)``: trilinear (``align_corners=False``, voxel centres at
    ``(i + 0.5) * n / m - 0.5``, as ``F.interpolate`` and ``radfm.preprocess.apply_plan`` place
    them), and channel ``a`` multiplied by ``size[a] / old[a]`` because a displacement of one
    coarse voxel is that many fine voxels.
    """
    size = tuple(int(s) for s in size)
    old = u.shape[2:]
    if tuple(old) == size:
        return u
    with torch.autocast(u.device.type, enabled=False):
        out = F.interpolate(u.float(), size=size, mode="trilinear", align_corners=False)
    scale = torch.tensor([n / o for n, o in zip(size, old)], dtype=out.dtype, device=out.device)
    return out * scale.view(1, 3, 1, 1, 1)


def affine_ddf(matrix: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """Displacement of a voxel-to-voxel affine map: ``u(x) = M[:3, :3] x + M[:3, 3] - x``.

    Args:
        matrix: ``(3, 4)``/``(4, 4)`` or ``(B, 3, 4)``/``(B, 4, 4)``, mapping fixed voxel indices
            ``(z, y, x)`` (model order) to moving voxel indices in model order.
        shape: ``(D, H, W)`` of the fixed grid.

    Returns:
        ``(B, 3, D, H, W)`` float32 voxels; ``warp(moving, affine_ddf(M, shape))`` resamples the
        moving image onto the fixed grid (``matrix_canonical_to_model`` makes ``M`` from two
        ``radfm.io.Volume`` affines).
    """
    m = torch.as_tensor(np.asarray(matrix) if isinstance(matrix, np.ndarray) else matrix, dtype=torch.float64)
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] not in ((3, 4), (4, 4)):
        raise InputError(f"affine matrix must be (3, 4) or (4, 4), got {tuple(m.shape)}.")
    grid = identity_grid(shape, dtype=torch.float64)  # (1, 3, D, H, W)
    lin = (m[:, :3, :3] - torch.eye(3, dtype=torch.float64)).to(grid)
    flat = grid.flatten(2)  # (1, 3, N)
    out = torch.einsum("bij,zjn->bin", lin, flat) + m[:, :3, 3, None]
    return out.reshape(m.shape[0], 3, *[int(s) for s in shape]).float()


def matrix_canonical_to_model(matrix: np.ndarray) -> np.ndarray:
    """A 4×4 map between canonical ``(i, j, k)`` indices -> the same map in model ``(z, y, x)`` order.

    Both input and output index orders are reversed, i.e. ``P M P`` with ``P`` the axis reversal.
    """
    p = np.eye(4)[[2, 1, 0, 3]]
    return p @ np.asarray(matrix, dtype=np.float64) @ p


# ----------------------------------------------------------------------------- Jacobians
def jacobian_determinant(u: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """``det(I + ∇u)`` per voxel, ``(B, 3, D, H, W)`` -> ``(B, D, H, W)``.

    Central differences (one-sided at the border, like ``np.gradient``) so the numbers match
    ``radfm.metrics.jacobian_determinant`` (which also gives the summary
    statistics, ``radfm.metrics.jacobian_stats``). ``spacing`` is the voxel size along (D, H, W)
    in the unit of ``u`` (1 when ``u`` is in voxels). Differentiable: used by the folding loss.
    """
    if u.ndim != 5 or u.shape[1] != 3 or min(u.shape[2:]) < 2:
        raise InputError(f"expected a (B, 3, D, H, W) field with every axis >= 2, got {tuple(u.shape)}.")
    sp = [float(s) for s in spacing]
    g = [torch.gradient(u[:, a], spacing=sp, dim=(1, 2, 3)) for a in range(3)]  # g[a][b] = du_a/dx_b
    j = [[g[a][b] + (1.0 if a == b else 0.0) for b in range(3)] for a in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


# ----------------------------------------------------------------------------- features
def local_correlation(fixed: torch.Tensor, moving: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Cost volume: channel-mean dot products of ``fixed`` with shifted ``moving`` features.

    ``(B, C, D, H, W)`` x2 -> ``(B, (2r+1)**3, D, H, W)``; shift ``(dz, dy, dx)`` in z-major order.
    Why: a correlation layer (PWC-Net, Dual-PRNet) tells the decoder which nearby moving
    voxel looks like each fixed voxel, whatever the intensity scale of the features, which is
    what lets a small decoder generalise from simulated to real pairs. Zero beyond the border.
    """
    r = int(radius)
    padded = F.pad(moving, (r, r, r, r, r, r))
    d, h, w = fixed.shape[2:]
    out = []
    for dz in range(2 * r + 1):
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                shifted = padded[:, :, dz:dz + d, dy:dy + h, dx:dx + w]
                out.append((fixed * shifted).mean(dim=1))
    return torch.stack(out, dim=1)
