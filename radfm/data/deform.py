"""Smooth random deformations and SIMULATED registration pairs with a known ground truth.

Displacement convention (the one VoxelMorph's ``SpatialTransformer`` and MONAI's ``Warp``
use, so a registration network can be supervised with ``field`` directly):

    warped(x) = moving(x + u(x))

``u`` is defined on the FIXED grid, in voxels, and a network registering ``moving`` onto
``fixed`` should predict ``u`` such that ``warp(moving, u) ≈ fixed``. In a ``PhantomPair`` this
holds exactly by construction: the rendered phantom is the moving image and the fixed
image is the moving one warped by ``field`` (``fixed(x) = moving(x + field(x))``), with fresh
scanner noise, so ``warp(pair.moving.labels.array, pair.field, order=0) ==
pair.fixed.labels.array``.

Axis order: fields here are ``(3, X, Y, Z)`` in canonical RAS+ voxel axes, channel ``a`` being
the displacement along array axis ``a``. Models work in ``(D, H, W) = (z, y, x)``: use
``field_canonical_to_model`` (transposes the grid AND reverses the channel order; forgetting
the channel reversal is the classic silent bug) before comparing with a network's output.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from radfm.data.phantom import PhantomCase, make_phantom, remeasure_findings, smooth_noise
from radfm.data.phantom.generate import _generate
from radfm.data.phantom.render import _acquire
from radfm.data.report_text import HEAD_ORGANS, TORSO_ORGANS, render_report
from radfm.errors import InputError
from radfm.io.volume import Volume
from radfm.metrics.deformation import jacobian_determinant


def random_smooth_field(
    shape: Sequence[int],
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    max_displacement_mm: float = 6.0,
    smoothness_mm: float = 20.0,
    seed: int | np.random.Generator = 0,
    min_jacobian: float = 0.2,
) -> np.ndarray:
    """A smooth random displacement field, ``(3, X, Y, Z)`` float32 in VOXELS.

    Each component is a Gaussian random field with correlation length ``smoothness_mm``
    (separable upsampling of a coarse random grid). It is scaled so the largest displacement
    magnitude is ``max_displacement_mm``; if that would fold space (Jacobian determinant
    below ``min_jacobian`` anywhere) it is shrunk until it does not, so the map x -> x + u(x)
    is diffeomorphic on the grid and ``max_displacement_mm`` is an upper bound.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(f"a displacement field needs a 3D shape, got {shape}.")
    sp = np.asarray(spacing, dtype=np.float64)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    f = smooth_noise(shape, smoothness_mm / sp, rng, channels=3)  # unit-std, treated as mm
    mag = float(np.sqrt((f**2).sum(axis=0)).max())
    if mag == 0.0 or max_displacement_mm == 0.0:
        return np.zeros((3, *shape), dtype=np.float32)
    f *= np.float32(max_displacement_mm / mag)
    field = (f / sp.astype(np.float32)[:, None, None, None]).astype(np.float32)
    for _ in range(20):
        if float(jacobian_determinant(field).min()) >= min_jacobian:
            break
        field *= np.float32(0.8)
    return field


def warp(array: np.ndarray, field: np.ndarray, *, order: int = 1, mode: str = "nearest") -> np.ndarray:
    """Resample ``array`` at ``x + field(x)``: ``out(x) = array(x + u(x))`` (VoxelMorph/MONAI).

    Args:
        array: ``(X, Y, Z)`` or ``(C, X, Y, Z)``.
        field: ``(3, X, Y, Z)`` displacement in voxels along the array's own axes.
        order: 1 (linear, images; output float32 unless the input is float64) or 0 (nearest,
            label maps: keeps the dtype and the set of label values).
        mode: ``scipy.ndimage.map_coordinates`` boundary mode.
    """
    if order not in (0, 1):
        raise InputError(f"warp order must be 0 (labels) or 1 (images), got {order}.")
    spatial = array.shape[-3:]
    if field.shape != (3, *spatial):
        raise InputError(f"field shape {field.shape} does not match the array's grid {spatial}.",
                         "Expected (3, X, Y, Z) in voxels.")
    coords = np.indices(spatial, dtype=np.float32) + field.astype(np.float32, copy=False)
    if order == 0:
        dtype = array.dtype
        src = array
    else:
        dtype = np.float64 if array.dtype == np.float64 else np.float32
        src = array.astype(dtype, copy=False)
    if array.ndim == 3:
        return ndimage.map_coordinates(src, coords, order=order, mode=mode, output=dtype)
    return np.stack([ndimage.map_coordinates(c, coords, order=order, mode=mode, output=dtype) for c in src])


def field_canonical_to_model(field: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` canonical field -> ``(3, D, H, W) = (3, Z, Y, X)`` with channels (dz, dy, dx).

    Grid transposed and channel order reversed, matching ``radfm.data.patches.canonical_to_model``
    and MONAI ``Warp`` on ``(B, 3, D, H, W)`` tensors. The operation is its own inverse.
    """
    return np.ascontiguousarray(field[::-1].transpose(0, 3, 2, 1))


field_model_to_canonical = field_canonical_to_model  # the same involution, named for readers


@dataclass
class PhantomPair:
    """A SIMULATED registration pair with exact ground truth.

    Attributes:
        fixed: target case; ``fixed(x) = moving(x + field(x))`` (labels exactly, image up to
            its fresh noise), findings re-measured on the warped labels.
        moving: the rendered phantom.
        field: ``(3, X, Y, Z)`` float32 voxel displacement on the fixed grid, canonical axes:
            what a VoxelMorph/MONAI-convention network should predict to warp moving onto fixed.
    """

    fixed: PhantomCase
    moving: PhantomCase
    field: np.ndarray


def make_phantom_pair(
    seed: int,
    *,
    max_displacement_mm: float = 6.0,
    smoothness_mm: float = 20.0,
    **phantom_kwargs: Any,
) -> PhantomPair:
    """Two views of one SIMULATED patient related by a known smooth deformation.

    ``phantom_kwargs`` go to ``radfm.data.phantom.make_phantom`` (modality, shape, spacing,
    lesions, ...). Deterministic in ``seed``; the field and the fixed image's noise come from
    streams of the same seed that the phantom itself does not use.
    """
    moving, clean, acq = _generate(seed, **_phantom_defaults(phantom_kwargs))
    streams = np.random.default_rng(seed).spawn(6)  # 0-3 are the phantom's own streams
    spacing = moving.image.spacing
    field = random_smooth_field(moving.image.shape, spacing=spacing, max_displacement_mm=max_displacement_mm,
                                smoothness_mm=smoothness_mm, seed=streams[4])
    fixed_labels = warp(moving.labels.array, field, order=0)
    fixed_image = _acquire(warp(clean, field, order=1), acq, streams[5])
    findings = remeasure_findings(moving.findings, fixed_labels, spacing)
    body = moving.image.meta.get("body", "chest_abdomen")
    text_rng = np.random.default_rng(seed).spawn(4)[3]  # same wording choices as the moving report
    report = render_report(findings, rng=text_rng, organs_examined=HEAD_ORGANS if body == "head" else TORSO_ORGANS,
                           modality=moving.image.modality)
    fixed = PhantomCase(
        image=Volume(fixed_image, moving.image.affine.copy(), moving.image.modality,
                     meta={**moving.image.meta, "pair_role": "fixed"}),
        labels=Volume(fixed_labels, moving.labels.affine.copy(), moving.labels.modality,
                      meta={**moving.labels.meta, "pair_role": "fixed"}),
        label_names=dict(moving.label_names),
        findings=findings,
        report=report,
        seed=moving.seed,
    )
    moving.image.meta["pair_role"] = "moving"
    moving.labels.meta["pair_role"] = "moving"
    return PhantomPair(fixed=fixed, moving=moving, field=field)


def _phantom_defaults(kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` completed with ``make_phantom``'s own defaults (read from its signature, so they exist once)."""
    defaults = {n: p.default for n, p in inspect.signature(make_phantom).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(kw) - set(defaults)
    if unknown:
        raise InputError(f"unknown phantom options {sorted(unknown)}.", f"Use some of {sorted(defaults)}.")
    return {**defaults, **kw}
