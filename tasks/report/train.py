"""Training the report models: one small loop, three stages, loss only on report tokens.

Why stages (LLaVA's recipe): a pretrained LLM already writes; what it lacks is a way to read
the volume. Stage 1 (*alignment*) trains only the bridge with the LLM (and, by default, the
encoder) frozen, so the resampler learns to speak the LLM's embedding language without
damaging either. Stage 2 (*instruction tuning*) adds LoRA adapters (peft) to the LLM and trains
them with the bridge, so the LLM learns the report style and the findings-conditioned prompt.
For models trained from scratch (the text drafter, the phantom starter model) a stage 0 first
teaches the small LLM the report language, conditioned on the findings written in the prompt.

Every stage goes through :func:`fit`: deterministic (seeded init, seeded batch order, no
dropout by default), warm-up + cosine learning rate, gradient clipping, optional bf16 autocast,
a progress bar, and ``accelerate`` so the same code runs on this CPU or many GPUs. Logging
reports losses and counts only — never report text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import radfm  # noqa: F401  (torchvision shim before transformers / peft)
from radfm.errors import ConfigError
from radfm.tasks.report.prompting import IGNORE_INDEX, EncodedExample, collate

__all__ = [
    "LoraSettings",
    "OptimConfig",
    "TrainExample",
    "VolumeFeatureCache",
    "add_encoder_lora",
    "add_lora",
    "fit",
    "freeze",
    "lm_loss",
    "merge_lora",
    "train_bridge",
    "train_language_model",
    "train_lora",
]

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """One stage's optimisation settings.

    Attributes:
        steps: optimiser steps.
        batch_size: examples per step.
        lr: peak learning rate (AdamW), reached after ``warmup_steps``, cosine-decayed to
            ``lr * min_lr_ratio``.
        weight_decay, grad_clip: as usual (``grad_clip`` = max global grad norm, 0 = off).
        bf16: bfloat16 autocast (several times faster matmuls on AMX CPUs and on GPUs).
        seed: batch order (and nothing else: initialisation is seeded where models are built).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bf16: bool = False
    seed: int = 0


@dataclass
class LoraSettings:
    """LoRA on the LLM (peft ``LoraConfig``); targets are Llama/Qwen/Mistral module names."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainExample:
    """Token ids + labels of one example, and the index of its volume (``None``: text only)."""

    encoded: EncodedExample
    volume: int | None = None


def freeze(module: nn.Module, frozen: bool = True) -> None:
    """(Un)freeze every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(not frozen)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over positions whose label is not ``IGNORE_INDEX``.

    ``logits (B, L, V)``, ``labels (B, L)`` (unshifted, as the model's input); the same
    computation as transformers' causal-LM loss, written out for tests and evaluation.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def _lr_lambda(cfg: OptimConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def fit(
    model: nn.Module,
    examples: Sequence[TrainExample],
    cfg: OptimConfig,
    step_loss: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
    *,
    pad_id: int,
    volumes: Sequence[torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train the parameters of ``model`` that require grad; returns the loss of every step.

    Args:
        model: the module holding the trainable parameters (frozen ones are skipped).
        examples: training examples; batches are drawn without replacement, reshuffled each
            epoch with a generator seeded by ``cfg.seed``.
        step_loss: ``(model, batch) -> loss``; ``batch`` has ``input_ids``, ``attention_mask``,
            ``labels`` ``(B, L)`` and ``volume_index`` (list, ``None`` for text-only rows).
        pad_id: padding id for the batches (right padding).
        volumes: what ``volume_index`` points into (passed through in ``batch["volumes"]``).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not examples:
        raise ConfigError("no training examples.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen.")
    # mixed_precision=None: accelerate's state is a process-wide singleton that refuses a second
    # setting, and stages differ; bf16 is applied below with torch.autocast instead.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=None)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(cfg))
    model, optim = accelerator.prepare(model, optim)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        idx = []
        while len(idx) < min(cfg.batch_size, len(examples)):
            if not order:
                order = torch.randperm(len(examples), generator=gen).tolist()
            idx.append(order.pop())
        rows = [examples[i] for i in idx]
        batch = collate([r.encoded for r in rows], pad_id, pad_to_multiple=32)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        batch["volume_index"] = [r.volume for r in rows]
        batch["volumes"] = volumes
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = step_loss(model, batch)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress and (step % 10 == 0 or step == cfg.steps - 1):
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    n = max(1, len(losses) // 10)
    log.info("%s: %d steps in %.0f s, loss %.3f -> %.3f", desc, cfg.steps, time.perf_counter() - t0,
             sum(losses[:n]) / n, sum(losses[-n:]) / n)
    return losses


# --- the stages -----------------------------------------------------------------------------------
def _text_step(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def train_language_model(lm: nn.Module, examples: Sequence[EncodedExample], cfg: OptimConfig, *, pad_id: int,
                         progress: bool = True, desc: str = "LLM") -> list[float]:
    """Stage 0 / text drafter: train a causal LM (all its parameters) on prompt → report examples."""
    freeze(lm, False)
    return fit(lm, [TrainExample(e) for e in examples], cfg, _text_step, pad_id=pad_id, progress=progress,
               desc=desc)


class VolumeFeatureCache:
    """Encoder tokens of each training volume, computed once while the encoder is frozen.

    Why: with a frozen encoder its output never changes, and the encoder forward is most of a
    step's cost; caching makes alignment cost the bridge + LLM only.
    """

    def __init__(self, encoder: nn.Module, volumes: Sequence[torch.Tensor], modality_ids: Sequence[int] | None,
                 bf16: bool) -> None:
        self.tokens: list[torch.Tensor] = []
        self.grid: tuple[int, int, int] | None = None
        encoder.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i, v in enumerate(volumes):
                mid = None if modality_ids is None else torch.tensor([modality_ids[i]])
                out = encoder(v[None], modality_ids=mid, output_pyramid=False)
                self.tokens.append(out.last_hidden_state[0].float())
                self.grid = out.grid_size


def _vlm_step_factory(cache: VolumeFeatureCache | None, modality_ids: Sequence[int] | None) -> Callable:
    def step(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        vi = [i for i in batch["volume_index"] if i is not None]
        volume_embeds = None
        if vi:
            if cache is not None:
                tokens = torch.stack([cache.tokens[i] for i in vi]).to(batch["input_ids"].device)
                volume_embeds = model.bridge(tokens, grid_size=cache.grid)
            else:
                pix = torch.stack([batch["volumes"][i] for i in vi]).to(batch["input_ids"].device)
                mids = None if modality_ids is None else torch.tensor([modality_ids[i] for i in vi])
                volume_embeds = model.get_volume_features(pix, mids)
        return model(batch["input_ids"], volume_embeds=volume_embeds, attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
    return step


def add_encoder_lora(vlm: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Wrap ``vlm.encoder`` with LoRA through ``radfm.adapters`` (the per-task adaptation of the shared encoder).

    Only the LoRA weights train; the encoder's own weights stay those of the shared checkpoint, so
    the adapter is saved apart (``radfm.adapters.save_encoder_adapter``, SHA-256 of the encoder
    recorded) and applied to it at load. Returns the wrapped encoder.
    """
    from radfm.adapters import LoraSpec, attach_encoder_lora
    from radfm.adapters.spec import DEFAULT_TARGETS

    s = settings or LoraSettings(r=8, alpha=16)
    names = {n for n, _ in vlm.encoder.named_modules()}
    targets = [t for t in s.target_modules if any(n == t or n.endswith("." + t) for n in names)]
    spec = LoraSpec(r=s.r, alpha=float(s.alpha), dropout=s.dropout, targets=tuple(targets or DEFAULT_TARGETS))
    vlm.encoder = attach_encoder_lora(vlm.encoder, spec)
    return vlm.encoder


def _encoder_trainable(vlm: nn.Module, train_encoder: bool) -> bool:
    """Unfreeze the encoder's LoRA weights (if it has adapters) or all of it (``train_encoder``).

    Returns whether the encoder changes during training (then its features cannot be cached).
    """
    if hasattr(vlm.encoder, "peft_config"):
        for n, p in vlm.encoder.named_parameters():
            p.requires_grad_("lora_" in n)
        return True
    if train_encoder:
        freeze(vlm.encoder, False)
    return train_encoder


def train_bridge(vlm: nn.Module, examples: Sequence[TrainExample], volumes: Sequence[torch.Tensor],
                 cfg: OptimConfig, *, pad_id: int, train_encoder: bool = False,
                 modality_ids: Sequence[int] | None = None, progress: bool = True,
                 features_bf16: bool = False, features: VolumeFeatureCache | None = None) -> list[float]:
    """Stage 1 (alignment): only the bridge learns (and the encoder with ``train_encoder``); LLM frozen.

    ``features_bf16``: compute the cached encoder tokens of a frozen encoder under bf16 autocast;
    ``features``: tokens already cached for these volumes (shared between stages).
    """
    freeze(vlm)
    return _fit_vlm(vlm, examples, volumes, cfg, pad_id=pad_id, train_encoder=train_encoder,
                    modality_ids=modality_ids, progress=progress, features_bf16=features_bf16, features=features,
                    desc="stage 1: bridge")


def _fit_vlm(vlm: nn.Module, examples: Sequence[TrainExample], volumes: Sequence[torch.Tensor], cfg: OptimConfig, *,
             pad_id: int, train_encoder: bool, modality_ids: Sequence[int] | None, progress: bool,
             features_bf16: bool, features: VolumeFeatureCache | None, desc: str) -> list[float]:
    """The bridge (and the encoder's LoRA or weights when they train) on top of what the stage unfroze.

    Encoder tokens are cached once when the encoder does not change (shared between stages).
    """
    freeze(vlm.bridge, False)
    moving = _encoder_trainable(vlm, train_encoder)
    cache = None if moving else features or VolumeFeatureCache(vlm.encoder, volumes, modality_ids,
                                                                cfg.bf16 or features_bf16)
    return fit(vlm, examples, cfg, _vlm_step_factory(cache, modality_ids), pad_id=pad_id, volumes=volumes,
               progress=progress, desc=desc)


def add_lora(vlm: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Wrap ``vlm.language_model`` with LoRA through ``radfm.adapters`` (in place); returns the peft model."""
    from radfm.adapters import LoraSpec, attach_llm_lora

    s = settings or LoraSettings()
    spec = LoraSpec(r=s.r, alpha=float(s.alpha), dropout=s.dropout, targets=tuple(s.target_modules))
    vlm.language_model = attach_llm_lora(vlm.language_model, spec)
    return vlm.language_model


def merge_lora(vlm: nn.Module) -> nn.Module:
    """Merge the LLM's LoRA adapters into its weights (export: one self-contained folder); returns ``vlm``."""
    from radfm.adapters import merge_llm_lora

    vlm.language_model = merge_llm_lora(vlm.language_model)
    return vlm


def train_lora(vlm: nn.Module, examples: Sequence[TrainExample], volumes: Sequence[torch.Tensor],
               cfg: OptimConfig, *, pad_id: int, lora: LoraSettings | None = None, train_encoder: bool = False,
               modality_ids: Sequence[int] | None = None, progress: bool = True,
               features_bf16: bool = False, features: VolumeFeatureCache | None = None) -> list[float]:
    """Stage 2 (instruction tuning): LoRA on the LLM + the bridge (+ the encoder) learn together.

    Leaves the adapters unmerged on ``vlm.language_model`` (save them apart with
    ``radfm.adapters.save_llm_adapter``, or call :func:`merge_lora`).
    """
    freeze(vlm)
    if not hasattr(vlm.language_model, "peft_config"):
        add_lora(vlm, lora)  # marks only the LoRA weights trainable inside the LLM
    else:
        for n, p in vlm.language_model.named_parameters():
            p.requires_grad_("lora_" in n)
    return _fit_vlm(vlm, examples, volumes, cfg, pad_id=pad_id, train_encoder=train_encoder,
                    modality_ids=modality_ids, progress=progress, features_bf16=features_bf16, features=features,
                    desc="stage 2: LoRA + bridge")
