"""Training the registration model on SIMULATED pairs with known fields.

Where the pairs come from (every pair is simulated; say so wherever results are shown):

* phantom subjects (``radfm.data.phantom``; CT and MR, torso and head) and real volumes
  (e.g. a T1 template) resampled to the model grid;
* each step takes one subject, crops it, draws a smooth random field
  (``radfm.data.deform.random_smooth_field``, VoxelMorph/"survey"-style synthetic
  deformations) and makes ``fixed = warp(moving, field)``, so the true field is known; both
  images then get independent intensity augmentation (gamma, noise) and shared random flips.

Losses (weights in :class:`TrainConfig`): field supervision (endpoint error, with deep
supervision of the coarse levels), unsupervised similarity (local NCC or MI) + diffusion
smoothness + Jacobian folding penalty, and weak Dice supervision when the subject has labels.
Encoder modes: "full" (train everything; for the tiny from-scratch encoder), "frozen" (a
pretrained encoder stays fixed, stem + decoder train; on radfm's starter encoder its untrained
MAE pyramid trains too and only the trunk stays fixed and out of the checkpoint) or "lora"
(the shared CNN encoder, ``encoder_source="shared"``: LoRA on its residual convs through
``radfm.adapters.attach_encoder_lora``, projections + decoder trainable; saved APART by
``model.save_registration``: the checkpoint holds the decoder, ``encoder_adapter/`` the LoRA).

Deterministic for a seed on one machine (numpy ``default_rng`` streams, ``torch.manual_seed``).
Run: ``radfm train registration -c configs/registration/starter.yaml [key=value …]`` (the recipe
and its runner live in ``radfm.tasks.registration.recipe``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from radfm.data.deform import random_smooth_field
from radfm.data.deform import warp as np_warp
from radfm.data.patches import canonical_to_model
from radfm.data.phantom import make_phantom
from radfm.errors import ConfigError
from radfm.io import Volume
from radfm.models import MODALITY_IDS
from radfm.tasks.registration import functional as RF
from radfm.tasks.registration import losses as L
from radfm.tasks.registration.model import RadFMRegistration, save_registration
from radfm.training.schedule import start_processes, warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["Subject", "TrainConfig", "make_pair", "phantom_subjects", "prepare_encoder", "subject_from_volume",
           "train"]


@dataclass
class Subject:
    """One training image on the model grid.

    Attributes:
        image: ``(D, H, W)`` float32 in model order (canonical ``(Z, Y, X)``), raw intensities.
        labels: ``(D, H, W)`` integer label map or ``None``.
        modality: "CT" or "MR" (selects the encoder's modality id).
        name: for logs.
    """

    image: np.ndarray
    labels: np.ndarray | None
    modality: str
    name: str = ""


@dataclass
class TrainConfig:
    """Recipe of one training run (all lengths in mm unless named ``_vox``).

    Attributes:
        steps, lr, warmup, weight_decay, seed: optimisation (Adam, linear warm-up over ``warmup``
            steps, then cosine decay to 5 % of ``lr``). Why a small ``lr``: a coarse level's
            residual is multiplied by its stride (up to 16) on the way to the finest grid.
        crop_vox: candidate crop sizes (model-grid voxels, multiples of the model's stride);
            each step picks one per axis.
        max_displacement_mm: range of the largest displacement of a random field.
        smoothness_mm: range of the correlation length of a random field.
        w_field, w_sim, w_smooth, w_fold, w_dice: loss weights. Field supervision leads: on a
            CPU budget it converged several times faster than NCC/Dice-led training (measured on
            phantom pairs: +0.07 Dice after 150 steps vs +0.03 with NCC and Dice at weight 1).
        deep_supervision: weight of the coarse levels' field errors (halved per level).
        similarity: "ncc" or "mi".
        encoder_mode: "full", "frozen" or "lora".
        lora_r: LoRA rank for ``encoder_mode="lora"``.
        bf16: bf16 autocast for the forward (about 3x faster convs on AMX CPUs).
        progress: show a tqdm bar.
    """

    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.0
    seed: int = 0
    crop_vox: tuple[int, ...] = (48, 64)
    max_displacement_mm: tuple[float, float] = (2.0, 12.0)
    smoothness_mm: tuple[float, float] = (14.0, 40.0)
    w_field: float = 1.0
    w_sim: float = 0.1
    w_smooth: float = 0.5
    w_fold: float = 10.0
    w_dice: float = 0.1
    deep_supervision: float = 0.5
    similarity: Literal["ncc", "mi"] = "ncc"
    encoder_mode: Literal["full", "frozen", "lora"] = "full"
    lora_r: int = 8
    bf16: bool = True
    progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- subjects
def phantom_subjects(seeds: Sequence[int], *, shape: tuple[int, int, int] = (80, 80, 80),
                     spacing: float = 2.0) -> list[Subject]:
    """SIMULATED subjects: phantoms alternating CT/MR and torso/head by seed, at ``spacing`` mm."""
    out = []
    for s in seeds:
        modality = "CT" if s % 2 == 0 else "MR"
        body = "head" if (s // 2) % 2 else "chest_abdomen"
        case = make_phantom(int(s), modality=modality, body=body, shape=shape, spacing=(spacing,) * 3)
        out.append(Subject(canonical_to_model(case.image.array).astype(np.float32),
                           canonical_to_model(case.labels.array).astype(np.uint8), modality,
                           f"phantom {modality} {body} seed {s}"))
    return out


def subject_from_volume(volume: Volume, *, spacing: float = 2.0, labels: Volume | None = None,
                        modality: str | None = None, name: str = "") -> Subject:
    """A real volume resampled to isotropic ``spacing`` mm in model order (labels by nearest)."""
    arr = torch.from_numpy(np.ascontiguousarray(canonical_to_model(volume.array.astype(np.float32))))
    size = [max(8, round(n * s / spacing)) for n, s in zip(arr.shape, reversed(volume.spacing))]
    img = F.interpolate(arr[None, None], size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    lab = None
    if labels is not None:
        lt = torch.from_numpy(np.ascontiguousarray(canonical_to_model(labels.array)).astype(np.float32))
        lab = F.interpolate(lt[None, None], size=size, mode="nearest")[0, 0].numpy().astype(np.uint8)
    mod = modality or (volume.modality if volume.modality in ("CT", "MR") else "MR")
    return Subject(img.astype(np.float32), lab, mod, name)


# ----------------------------------------------------------------------------- pairs
def _normalise(x: np.ndarray) -> np.ndarray:
    """Percentile p0.5..p99.5 -> [-1, 1], as ``PreprocessPlan(normalization="percentile")``."""
    lo, hi = np.percentile(x[::2, ::2, ::2], [0.5, 99.5])
    return ((np.clip(x, lo, hi) - lo) / max(float(hi - lo), 1e-6) * 2.0 - 1.0).astype(np.float32)


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent intensity augmentation of one image in [-1, 1]: gamma, scanner noise."""
    u = (x + 1.0) / 2.0
    u = np.clip(u, 0, 1) ** np.exp(rng.uniform(-0.3, 0.3))
    u = u + rng.normal(0.0, rng.uniform(0.0, 0.03), size=u.shape).astype(np.float32)
    return (u * 2.0 - 1.0).astype(np.float32)


def _crop(arrays: list[np.ndarray | None], size: Sequence[int], rng: np.random.Generator) -> list[Any]:
    shape = next(a for a in arrays if a is not None).shape
    out = []
    starts = [int(rng.integers(0, max(s - c, 0) + 1)) for s, c in zip(shape, size)]
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        sl = a[tuple(slice(st, st + c) for st, c in zip(starts, size))]
        pad = [(0, c - n) for c, n in zip(size, sl.shape)]
        out.append(np.pad(sl, pad, mode="edge") if any(p[1] for p in pad) else sl)
    return out


def make_pair(subject: Subject, rng: np.random.Generator, cfg: TrainConfig, *, spacing: float = 2.0,
              multiple: int = 16) -> dict[str, torch.Tensor]:
    """One SIMULATED pair from ``subject``: ``fixed = warp(moving, field)`` with a fresh smooth field.

    Returns tensors with a batch axis: ``fixed``/``moving`` ``(1, 1, D, H, W)`` in [-1, 1],
    ``field`` ``(1, 3, D, H, W)`` model-grid voxels, ``fixed_labels``/``moving_labels``
    ``(1, 1, D, H, W)`` long (absent without labels), ``modality_ids`` ``(1,)``.
    """
    size = [int(rng.choice([c for c in cfg.crop_vox if c % multiple == 0] or [multiple * 4])) for _ in range(3)]
    moving, labels = _crop([subject.image, subject.labels], size, rng)
    moving = _normalise(np.ascontiguousarray(moving))
    field = random_smooth_field(size, spacing=(spacing,) * 3, max_displacement_mm=float(rng.uniform(
        *cfg.max_displacement_mm)), smoothness_mm=float(rng.uniform(*cfg.smoothness_mm)), seed=rng)
    fixed = np_warp(moving, field, order=1)
    out = {"field": field}
    if labels is not None:
        out["moving_labels"] = np.ascontiguousarray(labels)
        out["fixed_labels"] = np_warp(np.ascontiguousarray(labels), field, order=0)
    out["fixed"], out["moving"] = _augment(fixed, rng), _augment(moving, rng)
    for axis in range(3):  # shared flips: the field's own component flips sign
        if rng.random() < 0.5:
            for k in out:
                out[k] = np.flip(out[k], axis=axis + (1 if k == "field" else 0))
            out["field"][axis] = -out["field"][axis]
    t = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in out.items()}
    for k in ("fixed", "moving", "fixed_labels", "moving_labels"):
        if k in t:
            t[k] = t[k][None] if k in ("fixed", "moving") else t[k][None].long()
    t["fixed"], t["moving"] = t["fixed"].float(), t["moving"].float()
    t["modality_ids"] = torch.tensor([MODALITY_IDS.get(subject.modality, MODALITY_IDS["other"])])
    return t


# ----------------------------------------------------------------------------- encoder modes
def prepare_encoder(model: Any, cfg: TrainConfig) -> Any:
    """Set what trains for ``cfg.encoder_mode``; returns the module to train (a peft model for "lora").

    A peft model (e.g. loaded with ``merge_adapter=False`` to continue a run) is returned as is.
    """
    if hasattr(model, "peft_config"):
        return model
    shared = model.config.encoder_source == "shared"
    if cfg.encoder_mode == "full":
        if shared:
            raise ConfigError("the shared encoder cannot be trained in full: its weights are not stored.",
                              "Use train.encoder_mode=lora (adapter saved apart) or frozen.")
        return model
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    if cfg.encoder_mode == "frozen":
        if model.config.encoder_source == "starter":  # the starter's pyramid is untrained (MAE): train it
            for p in model.encoder.pyramid.parameters():
                p.requires_grad_(True)
        return model
    if cfg.encoder_mode != "lora":
        raise ConfigError(f"encoder_mode must be 'full', 'frozen' or 'lora', got {cfg.encoder_mode!r}.")
    if not shared:
        raise ConfigError("encoder_mode='lora' saves the adapter apart and needs the shared CNN encoder.",
                          "Start from RadFMRegistration.from_shared_encoder() (recipe: encoder: shared).")
    from radfm.adapters import LoraSpec, attach_encoder_lora

    trainable = [n for n in ("proj", "decoders") if getattr(model, n, None) is not None]
    return attach_encoder_lora(model, LoraSpec(r=cfg.lora_r, alpha=2.0 * cfg.lora_r),
                               trainable_modules=trainable)


# ----------------------------------------------------------------------------- loop
def train(model: RadFMRegistration, subjects: Sequence[Subject], cfg: TrainConfig, *,
          checkpoint_dir: Path | None = None, checkpoint_every: int = 100, stop_after: int | None = None,
          accelerator: Any = None) -> dict[str, Any]:
    """Train ``model`` in place on pairs made from ``subjects`` with ``accelerate``; returns the loss history.

    Why accelerate: the same loop runs on this CPU, one GPU, or several processes
    (``accelerate launch -m radfm.cli train registration …``); each rank draws its own pairs.
    ``accelerator`` defaults to ``Accelerator(cpu=not torch.cuda.is_available())``.

    With ``checkpoint_dir`` the model is saved there every ``checkpoint_every`` steps (a long
    CPU run can then be stopped at any time and still leave a usable model). ``stop_after``
    ends the run after that many steps while the learning-rate schedule still spans
    ``cfg.steps`` (a run stopped part-way, as the shipped model's first stage was).

    Returns:
        ``{"loss": [...], "epe_vox": [...], "skipped": int, "seconds": float, "steps": int,
        "model": the trained module}``, one entry per step (``epe_vox``: mean endpoint error of the
        final field in model-grid voxels; ``skipped``: steps whose loss or gradient was not finite
        and were not applied; ``model``: ``model`` itself, or its peft wrapper in LoRA mode, which
        :func:`save_registration` saves with the adapter apart).
    """
    if not subjects:
        raise ConfigError("train() needs at least one subject.")
    accelerator, _rank, main, rng = start_processes(cfg.seed, accelerator)
    model = prepare_encoder(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, warmup=cfg.warmup, steps=cfg.steps)
    reg_config = (model.get_base_model() if hasattr(model, "peft_config") else model).config
    wrapped, opt = accelerator.prepare(model, opt)
    device = accelerator.device
    sim = L.similarity_loss(cfg.similarity)
    smooth, fold, epe = L.GradientSmoothness(), L.FoldingPenalty(), L.FieldError()
    max_label = max((int(s.labels.max()) for s in subjects if s.labels is not None), default=0)
    dice = L.LabelDice(max_label + 1) if max_label else None
    history: dict[str, Any] = {"loss": [], "epe_vox": [], "skipped": 0}
    t0 = time.perf_counter()
    n_steps = cfg.steps if stop_after is None else min(cfg.steps, int(stop_after))
    bar: Any = range(n_steps)
    if cfg.progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="registration training", unit="step")
    multiple = reg_config.pad_multiple
    for step in bar:
        subject = subjects[int(rng.integers(len(subjects)))]
        b = make_pair(subject, rng, cfg, spacing=reg_config.target_spacing[0], multiple=multiple)
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = wrapped(b["fixed"], b["moving"], modality_ids=b["modality_ids"])
        u = out.ddf
        warped = RF.warp(b["moving"], u)
        loss = cfg.w_field * epe(u, b["field"])
        n = len(out.level_fields)
        for i, lf in enumerate(out.level_fields[:-1]):
            w = cfg.deep_supervision * 0.5 ** (n - 2 - i)
            loss = loss + w * epe(lf, RF.resize_field(b["field"], lf.shape[2:]))
        loss = loss + cfg.w_sim * sim(warped, b["fixed"]) + cfg.w_smooth * smooth(u) + cfg.w_fold * fold(u)
        if dice is not None and "moving_labels" in b and cfg.w_dice:
            loss = loss + cfg.w_dice * dice(u, b["moving_labels"], b["fixed_labels"])
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(params, 5.0)
        if torch.isfinite(loss) and torch.isfinite(norm):
            opt.step()
        else:  # one bad pair (rare bf16 overflow) must not poison the weights: skip it, count it
            history["skipped"] += 1
            log.warning("step %d: non-finite loss or gradient, skipped", step)
        sched.step()
        with torch.no_grad():
            e = float((u - b["field"]).pow(2).sum(1).sqrt().mean())
        history["loss"].append(float(loss.detach()))
        history["epe_vox"].append(e)
        if cfg.progress and main:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", epe=f"{e:.2f}")
        if checkpoint_dir is not None and main and (step + 1) % checkpoint_every == 0:
            save_registration(accelerator.unwrap_model(wrapped), checkpoint_dir)
            (Path(checkpoint_dir) / "training_progress.json").write_text(json.dumps(
                {"step": step + 1, "epe_vox_last100": float(np.nanmean(history["epe_vox"][-100:])),
                 "loss_last100": float(np.nanmean(history["loss"][-100:])), "skipped": history["skipped"]}) + "\n")
    model.eval()
    history["seconds"] = time.perf_counter() - t0
    history["steps"] = n_steps
    history["model"] = model
    return history
