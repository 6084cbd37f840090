"""``register(fixed, moving)``: volumes in, a warped volume and a displacement field in mm out.

The path of one call:

1. checks: both volumes through ``radfm.check.require_valid``; 3D single-channel; CT↔MR only
   with ``similarity="mi"``; labels on the moving grid, integer, not empty;
2. geometry: the moving image is brought onto the fixed grid through WORLD coordinates
   (``inv(A_moving) @ [prealign] @ A_fixed``), so grids with different affines, spacings and
   orientations work; the optional affine pre-alignment (``prealign.py``) enters here;
3. the model on the plan grid (fixed grid resampled to ``plan.target_spacing``, 2 mm by
   default), in bf16 autocast, then optional instance optimisation;
4. the field is upsampled to the fixed grid, the moving image (and labels, nearest) are
   sampled ONCE from the original moving array at the total mapping (no double interpolation);
5. Jacobian statistics of the total map on the fixed grid.

Field conventions of the result (the one place they are converted):

* ``RegResult.field``: ``(3, X, Y, Z)`` float32 mm on the fixed image's canonical grid;
  component ``a`` is the displacement along canonical array axis ``a`` (R, A, S for an axis-
  aligned image). For the fixed voxel at world point ``p`` the corresponding moving point is
  ``p + D @ field[:, i, j, k]`` with ``D`` the fixed image's direction matrix (identity for an
  axis-aligned image), i.e. ``warped(p) = moving(p + d(p))``.
* ``RegResult.field_world()``: ``(X, Y, Z, 3)`` mm along world RAS+ axes (what the CLI writes).
  ITK/ANTs displacement fields use LPS: negate the first two components for them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from radfm.check import require_valid
from radfm.errors import ConfigError, InputError
from radfm.io import Volume
from radfm.metrics import jacobian_stats
from radfm.models import MODALITY_IDS
from radfm.preprocess.geometry import canonical_to_model, model_to_canonical
from radfm.preprocess.plan import apply_plan
from radfm.tasks.registration import functional as RF
from radfm.tasks.registration.model import RadFMRegistration

log = logging.getLogger(__name__)

__all__ = ["RegResult", "default_model_dir", "field_to_world", "load_model", "register"]

_CT_LIKE = {"CT": "CT", "CBCT": "CT", "MR": "MR"}


@dataclass
class RegResult:
    """Result of :func:`register`.

    Attributes:
        warped: the moving image on the fixed grid (fixed affine and native grid, moving's
            modality), float32.
        field: ``(3, X, Y, Z)`` float32 displacement in mm along the fixed image's canonical axes
            (see the module docstring); includes the affine pre-alignment when one was used.
        warped_labels: the moving labels on the fixed grid (nearest neighbour, same dtype), or None.
        stats: ``folding_percent`` (% of fixed voxels with ``det J <= 0``), ``jacobian`` (mean, std,
            min, max, std_log of ``det J``), ``runtime_s`` and per-stage ``timings_s``, the model
            directory, ``diffeomorphic``, ``instance_steps``, ``similarity``, ``prealign``.
        fixed: the fixed volume (for writing outputs in its space).
    """

    warped: Volume
    field: np.ndarray
    warped_labels: Volume | None
    stats: dict[str, Any]
    fixed: Volume = dataclasses.field(repr=False, default=None)  # type: ignore[assignment]

    def field_world(self) -> np.ndarray:
        """``(X, Y, Z, 3)`` float32 displacement in mm along world RAS+ axes."""
        return field_to_world(self.field, self.fixed.affine)


def field_to_world(field_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Canonical-axes mm field ``(3, X, Y, Z)`` -> world RAS+ mm ``(X, Y, Z, 3)`` for a grid's affine."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    direction = (a / np.sqrt((a**2).sum(axis=0))).astype(np.float32)
    return np.einsum("wa,axyz->xyzw", direction, field_mm.astype(np.float32))


# ----------------------------------------------------------------------------- model loading
def default_model_dir() -> Path:
    """The model shipped in the package (``radfm/tasks/registration/weights``)."""
    return Path(str(resources.files("radfm.tasks.registration") / "weights"))


@lru_cache(maxsize=2)
def _load_cached(path: str) -> RadFMRegistration:
    return RadFMRegistration.from_pretrained(path).eval()


def load_model(model: RadFMRegistration | str | Path | None = None) -> RadFMRegistration:
    """A model object, a checkpoint directory, or ``None`` for the shipped model (cached)."""
    if isinstance(model, RadFMRegistration):
        return model.eval()
    path = Path(model) if model is not None else default_model_dir()
    if not (path / "config.json").is_file():
        raise ConfigError(f"no registration model at {path}.",
                          "Pass --model DIR (a folder written by radfm's registration trainer); the shipped "
                          "model lives in radfm/tasks/registration/weights.")
    return _load_cached(str(path.resolve()))


# ----------------------------------------------------------------------------- checks
def _modality(volume: Volume, report: Any) -> str:
    mod = volume.modality if volume.modality != "unknown" else report.summary.get("modality", "unknown")
    return _CT_LIKE.get(str(mod), "unknown")


def _check_dims(volume: Volume, role: str) -> None:
    arr = np.asarray(volume.array)
    if arr.ndim == 4 and arr.shape[3] == 1:
        return
    if arr.ndim == 2 or (arr.ndim == 3 and min(arr.shape) < 2):
        raise InputError(f"the {role} image is 2D (shape {arr.shape}) but registration here is 3D.",
                         "Give two 3D volumes (fixed and moving must both be 3D); 2D slices are not supported.")
    if arr.ndim != 3:
        raise InputError(f"the {role} image has shape {arr.shape}; registration needs one 3D single-channel volume.",
                         "Pick one channel / time point and save it as a 3D file.")
    if min(arr.shape) < 8:
        raise InputError(f"the {role} image is too thin for 3D registration (shape {arr.shape}).",
                         "Give volumes with at least 8 voxels along every axis.")


def _check_labels(labels: Volume, moving: Volume) -> None:
    arr = np.asarray(labels.array)
    if arr.shape[:3] != moving.shape or not np.allclose(labels.affine, moving.affine, atol=1e-3):
        raise InputError(f"the label map (shape {arr.shape}) is not on the moving image's grid (shape {moving.shape}).",
                         "Labels must belong to the MOVING image: same shape and affine.")
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise InputError("the label map holds non-integer values.", "Give an integer label map (0 = background).")
    if not np.any(arr):
        raise InputError("the label map is empty (every voxel is 0), so there is nothing to warp or score.",
                         "Check that the right file was given and that labels are non-zero where structures are.")


def _check_pair(fixed: Volume, moving: Volume, similarity: str) -> tuple[str, str]:
    _check_dims(fixed, "fixed")
    _check_dims(moving, "moving")
    rf, rm = require_valid(fixed), require_valid(moving)
    mf, mm = _modality(fixed, rf), _modality(moving, rm)
    if similarity not in ("ncc", "mi"):
        raise ConfigError(f"similarity must be 'ncc' or 'mi', got {similarity!r}.")
    if "unknown" not in (mf, mm) and mf != mm and similarity == "ncc":
        raise InputError(
            f"fixed is {mf} and moving is {mm}: local NCC assumes both images show tissue with the same "
            "intensity mapping, which CT and MR do not.",
            "Use mutual information: similarity='mi' (CLI: --similarity mi), best with --instance-steps 50; "
            "the shipped model was trained on same-modality pairs.")
    return mf, mm


# ----------------------------------------------------------------------------- sampling helpers
def _sample(array: np.ndarray, coords: torch.Tensor, *, labels: bool) -> np.ndarray:
    """Sample a canonical ``(X, Y, Z)`` array at model-order voxel positions ``(1, 3, D, H, W)``.

    Returns a canonical array on the positions' grid. Images: trilinear, outside = the image's
    minimum (background); labels: nearest, outside = 0, dtype kept.
    """
    src = np.ascontiguousarray(canonical_to_model(array))
    if labels:
        t = torch.from_numpy(src.astype(np.float32))[None, None]
        out = RF.resample(t, coords, mode="nearest", padding="zeros")[0, 0].round()
        return np.ascontiguousarray(model_to_canonical(out.numpy())).astype(array.dtype)
    t = torch.from_numpy(src.astype(np.float32))[None, None]
    bg = float(t.min())
    out = RF.resample(t - bg, coords, mode="linear", padding="zeros")[0, 0] + bg
    return np.ascontiguousarray(model_to_canonical(out.numpy()))


def _on_plan_grid(array: np.ndarray, affine: np.ndarray, plan: Any) -> Volume:
    """The array resampled to the plan's grid (the size ``apply_plan`` would choose) as a Volume.

    Why before ``apply_plan``: it resamples after normalising, i.e. percentiles over the full
    1 mm volume (7 M voxels) and a float copy of it; resampling first does the same
    interpolation (same sizes, ``align_corners=False``) and leaves ``apply_plan`` 8x less to do.
    """
    vol = Volume(np.asarray(array, dtype=np.float32), affine, "unknown")
    if plan.target_spacing is None:
        return vol
    size = tuple(max(1, round(n * s / t)) for n, s, t in zip(vol.shape, vol.spacing, plan.target_spacing))
    if size == vol.shape:
        return vol
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(vol.array)))[None, None]
    small = torch.nn.functional.interpolate(t, size=tuple(reversed(size)), mode="trilinear", align_corners=False)
    scale = np.diag([n / m for n, m in zip(vol.shape, size)] + [1.0])
    # the same grid apply_plan's interpolation would make: voxel centres at (i + 0.5) * n / m - 0.5
    shift = np.eye(4)
    shift[:3, 3] = [0.5 * (n / m) - 0.5 for n, m in zip(vol.shape, size)]
    return Volume(np.ascontiguousarray(model_to_canonical(small[0, 0].numpy())), affine @ shift @ scale, "unknown")


# ----------------------------------------------------------------------------- register
def register(
    fixed: Volume,
    moving: Volume,
    *,
    model: RadFMRegistration | str | Path | None = None,
    labels: Volume | None = None,
    instance_steps: int = 0,
    diffeomorphic: bool | None = None,
    similarity: Literal["ncc", "mi"] = "ncc",
    prealign: Literal["none", "moments", "affine"] = "none",
    bf16: bool = True,
) -> RegResult:
    """Register ``moving`` onto ``fixed`` and warp it (and its labels) into the fixed image's space.

    Args:
        fixed, moving: 3D single-channel volumes (any grids, affines and spacings; world
            coordinates relate them).
        model: a :class:`RadFMRegistration`, a model directory, or ``None`` for the shipped model.
        labels: label map ON THE MOVING GRID to carry along (nearest neighbour), e.g. an atlas.
        instance_steps: Adam steps of instance optimisation on this pair (0 = network only).
        diffeomorphic: ``None`` follows the model. ``True`` with a displacement model treats its
            field as a stationary velocity and integrates it (first order, ``exp(u) ≈ id + u``
            for small ``u``): the map becomes invertible at a small accuracy cost.
        similarity: "ncc" (same modality) or "mi" (CT↔MR; used by instance optimisation).
        prealign: "none", "moments" or "affine" (SimpleITK, see ``prealign.py``).
        bf16: bf16 autocast for the network (about 3x faster on AMX CPUs).

    Returns:
        :class:`RegResult` (fields and conventions in the module docstring).

    Raises:
        InputError: 2D/4D inputs, failed input checks, CT↔MR with NCC, bad or empty labels,
            negative ``instance_steps``.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if isinstance(instance_steps, bool) or not isinstance(instance_steps, int | np.integer) or instance_steps < 0:
        raise InputError(f"instance_steps must be a whole number >= 0, got {instance_steps!r}.",
                         "0 runs the network only; N > 0 refines its field with N steps.")
    mod_f, mod_m = _check_pair(fixed, moving, similarity)
    if labels is not None:
        _check_labels(labels, moving)
    fixed = fixed if fixed.array.ndim == 3 else fixed.with_array(fixed.array[..., 0])
    moving = moving if moving.array.ndim == 3 else moving.with_array(moving.array[..., 0])
    net = load_model(model)
    diffeo = net.config.diffeomorphic if diffeomorphic is None else bool(diffeomorphic)
    timings["checks_s"] = time.perf_counter() - t0

    # --- geometry: fixed canonical voxel -> moving canonical voxel, through world mm -----------
    t = time.perf_counter()
    world = np.eye(4)
    if prealign != "none":
        from radfm.tasks.registration.prealign import affine_prealign

        world = affine_prealign(fixed, moving, method=prealign)  # type: ignore[arg-type]
    vox = np.linalg.inv(moving.affine) @ world @ fixed.affine
    same_grid = fixed.shape == moving.shape and np.allclose(vox, np.eye(4), atol=1e-5)
    vox_model = torch.from_numpy(RF.matrix_canonical_to_model(vox)).float()
    shape_model = tuple(reversed(fixed.shape))
    if same_grid:
        moving_on_fixed = moving.array.astype(np.float32, copy=False)
    else:
        coords = RF.identity_grid(shape_model) + RF.affine_ddf(vox_model, shape_model)
        moving_on_fixed = _sample(moving.array, coords, labels=False)
        del coords
    timings["resample_s"] = time.perf_counter() - t

    # --- network on the plan grid ----------------------------------------------------------------
    t = time.perf_counter()
    plan = net.plan
    pf = apply_plan(_on_plan_grid(fixed.array, fixed.affine, plan), plan)
    pm = apply_plan(_on_plan_grid(moving_on_fixed, fixed.affine, plan), plan)
    ids = torch.tensor([MODALITY_IDS.get(mod_f, MODALITY_IDS["other"]), MODALITY_IDS.get(mod_m, MODALITY_IDS["other"])])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(pf.tensor[None], pm.tensor[None], modality_ids=ids if net.encoder.modality_embed is not None else None)
    u = pf.unpad(out.ddf)
    svf = pf.unpad(out.svf) if out.svf is not None else None
    timings["model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if diffeo and svf is None:
        svf = u  # displacement model asked to be diffeomorphic: use its field as a velocity
    if instance_steps > 0:
        from radfm.tasks.registration.instance_opt import optimise_field

        fix_t, mov_t = pf.unpad(pf.tensor)[None], pm.unpad(pm.tensor)[None]
        u = optimise_field(fix_t, mov_t, svf if diffeo else u, steps=instance_steps, svf=diffeo,
                           similarity=similarity, int_steps=net.config.int_steps)
    elif diffeo and out.svf is None:
        u = RF.integrate_velocity(svf, net.config.int_steps)
    timings["instance_s"] = time.perf_counter() - t

    # --- full-resolution field, total map, one resampling of the original moving ------------------
    t = time.perf_counter()
    u_full = RF.resize_field(u, shape_model)  # (1, 3, Z, Y, X) fixed voxels
    del u
    pos = RF.identity_grid(shape_model) + u_full  # fixed voxel positions (model order)
    if not same_grid:
        lin, off = vox_model[:3, :3], vox_model[:3, 3]
        pos = torch.einsum("ij,bjdhw->bidhw", lin, pos) + off.view(1, 3, 1, 1, 1)
    warped = _sample(moving.array, pos, labels=False)
    warped_labels = None
    if labels is not None:
        lab = np.asarray(labels.array)
        lab = lab.astype(np.int32) if lab.dtype.kind == "f" else lab  # integer-valued floats (checked above)
        warped_labels = _sample(lab[..., 0] if lab.ndim == 4 else lab, pos, labels=True)
    del pos
    timings["warp_s"] = time.perf_counter() - t

    # --- field in mm (fixed canonical axes) and Jacobian statistics ----------------------------
    t = time.perf_counter()
    a = fixed.affine[:3, :3]
    spacing = np.sqrt((a**2).sum(axis=0))
    direction = a / spacing
    total = u_full
    if not np.allclose(world, np.eye(4)):
        # total world displacement d(p) = W (p + A u) - p, expressed along the fixed canonical axes
        lin_w = direction.T @ world[:3, :3] @ direction  # world map in fixed canonical mm axes
        off_w = direction.T @ (world[:3, :3] @ fixed.affine[:3, 3] + world[:3, 3] - fixed.affine[:3, 3])
        x_mm = (RF.identity_grid(shape_model).flip(1) * torch.tensor(spacing, dtype=torch.float32).view(1, 3, 1, 1, 1))
        p_mm = x_mm + u_full.flip(1) * torch.tensor(spacing, dtype=torch.float32).view(1, 3, 1, 1, 1)
        lw = torch.from_numpy(lin_w).float()
        d_mm = torch.einsum("ij,bjdhw->bidhw", lw, p_mm) + torch.from_numpy(off_w).float().view(1, 3, 1, 1, 1) - x_mm
        field_mm = np.ascontiguousarray(model_to_canonical(d_mm[0].numpy(), channels="first"))
        total = d_mm.flip(1) / torch.tensor(spacing[::-1].copy(), dtype=torch.float32).view(1, 3, 1, 1, 1)
        del x_mm, p_mm, d_mm
    else:
        scale = torch.tensor(spacing[::-1].copy(), dtype=torch.float32).view(1, 3, 1, 1, 1)  # (z, y, x) mm
        field_mm = np.ascontiguousarray(model_to_canonical((u_full * scale).flip(1)[0].numpy(), channels="first"))
    jac = jacobian_stats(total[0])
    timings["stats_s"] = time.perf_counter() - t

    runtime = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "folding_percent": jac["folding_percent"],
        "jacobian": {k: jac[k] for k in ("mean", "std", "min", "max", "std_log")},
        "runtime_s": runtime,
        "timings_s": timings,
        "diffeomorphic": diffeo,
        "instance_steps": int(instance_steps),
        "similarity": similarity,
        "prealign": prealign,
        "model_grid": [int(s) for s in reversed(pf.resampled_shape)],
        "model_spacing_mm": list(plan.target_spacing) if plan.target_spacing is not None else None,
        "modalities": [mod_f, mod_m],
        "torch_threads": torch.get_num_threads(),
        "dtype": "bf16 autocast" if bf16 else "fp32",
    }
    warped_vol = Volume(warped.astype(np.float32), fixed.affine.copy(), moving.modality, fixed.native,
                        {"registration": "warped moving image on the fixed grid"})
    labels_vol = None
    if warped_labels is not None:
        labels_vol = Volume(warped_labels, fixed.affine.copy(), labels.modality, fixed.native,
                            {"registration": "moving labels warped onto the fixed grid"})
    return RegResult(warped=warped_vol, field=field_mm.astype(np.float32), warped_labels=labels_vol, stats=stats,
                     fixed=fixed)
