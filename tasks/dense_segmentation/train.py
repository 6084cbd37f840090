"""The training loop of dense segmentation, the same for every strategy and for outside baselines.

:func:`fit` trains a radfm model, a PeftModel or any ``(B,C,D,H,W) → (B,K,D,H,W)`` segmenter (a
MONAI UNet in ``radfm bench fewshot``): patches with foreground oversampling (class first, then
voxel, as nnU-Net), flips / small scaling / intensity augmentation (:class:`AugmentConfig`), Dice +
cross-entropy (MONAI ``DiceCELoss``), AdamW with warm-up and cosine decay, optional bf16 autocast
(CPU too), a seed that fixes everything (:class:`TrainConfig`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radfm.data.patches import extract_patch, sample_patch_centers
from radfm.errors import ConfigError, InputError
from radfm.tasks.dense_segmentation.data import PreparedCase
from radfm.tasks.dense_segmentation.model import autocast, base_model, forward_logits

__all__ = ["AugmentConfig", "TrainConfig", "fit"]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of ``(B, C, D, H, W)`` patches (labels follow the geometry).

    Attributes:
        flip_axes: model axes (0 = D/z, 1 = H/y, 2 = W/x) that may be mirrored, each with
            ``flip_prob``. Default: not x (left-right), because label sets carry laterality
            (left/right kidney) and the liver/spleen asymmetry is a strong cue.
        scale_range, scale_prob: isotropic zoom factor drawn per patch (trilinear image, nearest label).
        intensity_scale, intensity_shift: ``x * U(1 ± s) + U(± b)`` on normalised intensities.
        noise_std: Gaussian noise with a std drawn from ``U(0, noise_std)``.
    """

    flip_axes: tuple[int, ...] = (0, 1)
    flip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    scale_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.03

    @classmethod
    def strong(cls) -> AugmentConfig:
        """For K ≤ 2: every patch is zoomed and intensities vary more."""
        return cls(scale_range=(0.8, 1.2), scale_prob=0.6, intensity_scale=0.2, intensity_shift=0.15,
                   noise_std=0.05)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (tests, ablations)."""
        return cls(flip_axes=(), scale_prob=0.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """One training run of :func:`fit`.

    Attributes:
        steps: optimiser steps; batch_size: patches per step; patch_size: ``(D, H, W)`` voxels.
        lr: peak learning rate of the head, LoRA factors and scratch models; ``encoder_lr_scale``
            multiplies it for pretrained encoder weights that train (full fine-tuning).
        weight_decay, warmup_fraction: AdamW decay; linear warm-up share of the steps (then cosine
            decay to 5 % of the peak).
        fg_fraction: expected share of patches centred on a foreground voxel.
        augment: :class:`AugmentConfig`; bf16: autocast matmuls/convs to bfloat16 (CPU or GPU).
        seed: fixes patch choice, augmentation, initialisation and dropout.
    """

    steps: int = 200
    patch_size: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = 2
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    fg_fraction: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bf16: bool = False
    seed: int = 0


def _augment(x: torch.Tensor, y: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Augment a batch: ``x`` ``(B, C, D, H, W)`` float, ``y`` ``(B, 1, D, H, W)`` long."""
    b = x.shape[0]
    xs, ys = [], []
    for i in range(b):
        xi, yi = x[i:i + 1], y[i:i + 1]
        dims = [2 + a for a in aug.flip_axes if float(torch.rand((), generator=g)) < aug.flip_prob]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        if aug.scale_prob > 0 and float(torch.rand((), generator=g)) < aug.scale_prob:
            lo, hi = aug.scale_range
            s = lo + (hi - lo) * float(torch.rand((), generator=g))
            theta = torch.zeros(1, 3, 4, dtype=xi.dtype)
            theta[0, 0, 0] = theta[0, 1, 1] = theta[0, 2, 2] = 1.0 / s  # zoom in when s > 1
            grid = F.affine_grid(theta, list(xi.shape), align_corners=False)
            xi = F.grid_sample(xi, grid, mode="bilinear", padding_mode="border", align_corners=False)
            yi = F.grid_sample(yi.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
        if aug.intensity_scale or aug.intensity_shift:
            scale = 1.0 + aug.intensity_scale * (2 * float(torch.rand((), generator=g)) - 1)
            shift = aug.intensity_shift * (2 * float(torch.rand((), generator=g)) - 1)
            xi = xi * scale + shift
        if aug.noise_std:
            sigma = aug.noise_std * float(torch.rand((), generator=g))
            xi = xi + sigma * torch.randn(xi.shape, generator=g, dtype=xi.dtype)
        xs.append(xi)
        ys.append(yi)
    return torch.cat(xs), torch.cat(ys)


def _batches(cases: Sequence[PreparedCase], cfg: TrainConfig) -> Iterable[tuple[torch.Tensor, torch.Tensor,
                                                                               int | None]]:
    """Endless seeded stream of ``(x (B,C,D,H,W), y (B,1,D,H,W), modality_id)`` patch batches."""
    rng = np.random.default_rng([cfg.seed, 1])
    order: list[int] = []
    pads = [[float(ch.min()) for ch in c.image] for c in cases]
    while True:
        xs, ys = [], []
        mid = None
        for _ in range(cfg.batch_size):
            if not order:
                order = list(rng.permutation(len(cases)))
            i = int(order.pop())
            case = cases[i]
            center = sample_patch_centers(case.label, cfg.patch_size, 1, fg_fraction=cfg.fg_fraction, rng=rng)[0]
            xs.append(np.stack([extract_patch(ch, center, cfg.patch_size, p) for ch, p in zip(case.image, pads[i])]))
            ys.append(extract_patch(case.label, center, cfg.patch_size, 0)[None])
            mid = case.modality_id
        yield torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys).astype(np.int64)), mid


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Head, LoRA factors and scratch weights at ``lr``; trainable pretrained encoder weights scaled."""
    base = base_model(model)
    new, pretrained = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_encoder_weight = base is not None and ".encoder." in f".{name}" and "lora_" not in name
        (pretrained if is_encoder_weight else new).append(p)
    groups = [{"params": new, "lr": cfg.lr}]
    if pretrained:
        groups.append({"params": pretrained, "lr": cfg.lr * cfg.encoder_lr_scale})
    if not new and not pretrained:
        raise ConfigError("the model has no trainable parameters.")
    return groups


def fit(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "adapt",
) -> dict[str, Any]:
    """Train ``model`` (a radfm model, PeftModel or any ``(B,C,D,H,W) → (B,K,D,H,W)`` segmenter) in place.

    Returns ``{"loss_first", "loss_last" (mean of the last 10 % of steps), "seconds", "steps",
    "seconds_per_step"}`` and, under ``"_losses"``, every step's loss (for the loss curve).
    The same seed, cases and config give bit-identical weights (CPU). Runs on ``accelerate``
    (``Accelerator.prepare`` / ``backward``) like every radfm trainer.
    """
    from accelerate import Accelerator
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    if not cases:
        raise InputError("fit needs at least one training case.")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got {cfg.steps}.")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    acc = Accelerator(cpu=torch.device(device).type == "cpu", mixed_precision="no")
    model.to(acc.device).train()
    device = acc.device
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    net, opt = acc.prepare(model, opt)
    warm = max(1, round(cfg.steps * cfg.warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    stream = iter(_batches(cases, cfg))
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        x, y, mid = next(stream)
        x, y = _augment(x, y, cfg.augment, g)
        x, y = x.to(device), y.to(device)
        with autocast(device, cfg.bf16):
            logits = forward_logits(net, x, mid)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    tail = max(1, cfg.steps // 10)
    return {"loss_first": losses[0], "loss_last": float(np.mean(losses[-tail:])), "seconds": seconds,
            "steps": cfg.steps, "seconds_per_step": seconds / cfg.steps, "_losses": losses}
