"""``adapt(...)``: fit the shared encoder to a segmentation task from K labelled cases → an adapter dir.

The steps, each in its own module: the cases (:mod:`~radfm.tasks.dense_segmentation.data`), the
strategy and its model (:mod:`~radfm.tasks.dense_segmentation.strategy`), the training loop
(:mod:`~radfm.tasks.dense_segmentation.train`), a held-out Dice through the inference path
(:mod:`~radfm.tasks.dense_segmentation.inference`) and the adapter folder
(:mod:`~radfm.tasks.dense_segmentation.checkpoint`). ``radfm adapt`` is its command line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import radfm  # noqa: F401  (torchvision shim before transformers/peft)
from radfm.adapters.lora import LoraSpec, trainable_parameters
from radfm.errors import ConfigError, InputError
from radfm.metrics import dice_score
from radfm.models.encoder import RadFMEncoder
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.dense_segmentation.checkpoint import load_encoder, resolve_encoder_dir, save_adapted
from radfm.tasks.dense_segmentation.data import (
    class_map,
    collect_cases,
    label_lookup,
    make_plan,
    prepare_case,
)
from radfm.tasks.dense_segmentation.inference import predict_volume
from radfm.tasks.dense_segmentation.strategy import (
    STRATEGIES,
    Strategy,
    build_model,
    choose_strategy,
    default_steps,
)
from radfm.tasks.dense_segmentation.train import AugmentConfig, TrainConfig, fit
from radfm.viz import save_curve

log = logging.getLogger(__name__)

__all__ = ["TASKS", "AdaptResult", "adapt"]

TASKS: tuple[str, ...] = ("segmentation",)


@dataclass
class AdaptResult:
    """What :func:`adapt` produced.

    Attributes:
        out_dir: the adapter directory (load it with :func:`~radfm.tasks.dense_segmentation.checkpoint.load_adapted`).
        metrics: training loss, time, steps and, when unused labelled cases existed, held-out Dice.
        trainable: :func:`~radfm.adapters.lora.trainable_parameters` of the trained model.
        strategy: the strategy actually used ("auto" resolved); train_cases: ids used for training.
    """

    out_dir: Path
    metrics: dict[str, Any]
    trainable: dict[str, float]
    strategy: str = ""
    train_cases: list[str] = field(default_factory=list)


def adapt(
    task: str = "segmentation",
    *,
    data: str | Path | Any,
    shots: int,
    strategy: Strategy = "auto",
    encoder: str | Path | None = None,
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    patch_size: Sequence[int] | None = None,
    lr: float | None = None,
    label_names: Mapping[int, str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    spacing: Sequence[float] | None = None,
    bf16: bool = False,
    eval_cases: int = 2,
    lora: LoraSpec | None = None,
    augment: AugmentConfig | None = None,
) -> AdaptResult:
    """Fit the shared encoder to a segmentation task from ``shots`` labelled cases; write an adapter dir.

    Args:
        task: "segmentation" (the only one so far).
        data: a dataset folder / manifest (``radfm.data.load_cases``), a ``datasets.Dataset`` (e.g.
            ``phantom_dataset``) or a list of ``(image Volume, label Volume)`` pairs / PhantomCases.
        shots: K, the number of labelled cases used for training: the first K of a seeded
            permutation of the data (reported in ``AdaptResult.train_cases``); up to ``eval_cases``
            of the others are predicted afterwards for a held-out Dice in ``metrics``.
        strategy: "linear" (head only), "lora", "full" or "auto" (:func:`choose_strategy`).
        encoder: encoder directory (``RadFMEncoder.save_pretrained``); ``None``: the starter encoder.
        out_dir: where the adapter goes (created). seed: fixes everything (same seed → same weights).
        steps: optimiser steps (default :func:`default_steps`). patch_size: ``(D, H, W)`` training patch
            and inference window (default 48³, rounded up to the encoder's patch).
        lr: peak learning rate (default 1e-3; full fine-tuning trains the encoder at a tenth of it).
        label_names: ``{source label id: name}`` to learn; ids sharing a name merge into one class
            (``{2: "lungs", 3: "lungs"}``); default every label the data names, else every id found.
        device: torch device. progress: show a progress bar. spacing: target voxel size (mm, X/Y/Z).
        bf16: bfloat16 autocast in training and evaluation. lora / augment: override ``auto``'s choices.
    Returns:
        :class:`AdaptResult`.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}.", f"Supported: {', '.join(TASKS)}.")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}.", f"Choose one of {', '.join(STRATEGIES)}.")
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}.")
    enc_dir = resolve_encoder_dir(encoder)
    refs, data_names = collect_cases(data)
    if shots > len(refs):
        raise InputError(f"shots={shots} but the data has only {len(refs)} labelled case(s).",
                         "Lower --shots or add cases.")
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(refs))]
    train_refs = [refs[i] for i in order[:shots]]
    eval_refs = [refs[i] for i in order[shots:shots + max(0, eval_cases)]]
    train_pairs = [r.load() for r in train_refs]

    auto_strategy, auto_lora, auto_aug = choose_strategy(shots)
    resolved = auto_strategy if strategy == "auto" else strategy
    spec = (lora or auto_lora or LoraSpec(r=16, alpha=32.0, include_pyramid=True)) if resolved == "lora" else None
    aug = augment or auto_aug

    if label_names is None:
        found = sorted({int(v) for _, lab in train_pairs for v in np.unique(lab.array) if int(v) != 0})
        label_names = {i: data_names.get(i, f"label_{i}") for i in found}
    classes, to_class, sources = class_map(label_names)
    encoder_model = load_encoder(enc_dir)
    plan = make_plan([img for img, _ in train_pairs], encoder_dir=enc_dir,
                     pad_multiple=encoder_model.config.patch_size, patch_size=patch_size, spacing=spacing)
    _check_patch(plan, encoder_model)
    cases = [prepare_case(img, lab, plan, to_class, r.case_id) for r, (img, lab) in zip(train_refs, train_pairs)]

    model = build_model(encoder_model, len(classes), resolved, lora=spec, label_names=classes, seed=seed)
    trainable = trainable_parameters(model)
    cfg = TrainConfig(steps=int(steps or default_steps(shots)), patch_size=plan.patch_size,
                      lr=float(lr or 1e-3), augment=aug, bf16=bf16, seed=seed)
    log.info("adapt: %s, K=%d, %d classes, %.2f%% trainable, %d steps", resolved, shots, len(classes) - 1,
             trainable["percent"], cfg.steps)
    metrics = fit(model, cases, cfg, device=device, progress=progress, desc=f"adapt {resolved} K={shots}")
    losses = metrics.pop("_losses")
    metrics["strategy"] = resolved

    if eval_refs:
        per_class: dict[int, list[float]] = {}
        for ref in eval_refs:
            img, lab = ref.load()
            pred = predict_volume(model, plan, img, bf16=bf16, device=device)
            target = label_lookup(to_class, int(np.asarray(lab.array).max()))[np.asarray(lab.array).astype(np.int64)]
            for c, v in _dice_per_class(pred, target, len(classes)).items():
                per_class.setdefault(c, []).append(v)
        metrics["heldout_cases"] = [r.case_id for r in eval_refs]
        metrics["heldout_dice"] = {classes[c]: float(np.mean(v)) for c, v in per_class.items()}
        metrics["heldout_mean_dice"] = float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else 0.0

    out = Path(out_dir)
    extra = {"strategy": resolved, "shots": shots, "train_cases": [r.case_id for r in train_refs], "seed": seed,
             "train": {**asdict(cfg), "augment": asdict(cfg.augment)}, "metrics": metrics,
             "source_ids": {str(c): ids for c, ids in sources.items()}, "trainable": trainable}
    save_adapted(model, resolved, out, plan=plan, classes=classes, task=task, enc_dir=enc_dir,
          encoder_model=encoder_model, extra=extra)
    save_curve(out / "loss_curve.png", list(range(1, len(losses) + 1)), {"Dice + CE loss": losses},
               xlabel="optimizer step", ylabel="training loss", title=f"adapt {resolved}, K={shots}")
    return AdaptResult(out_dir=out, metrics=metrics, trainable=trainable, strategy=resolved,
                       train_cases=[r.case_id for r in train_refs])


def _check_patch(plan: PreprocessPlan, encoder: RadFMEncoder) -> None:
    """A CNN trunk's deepest stage must be more than one voxel in a patch (and inference window).

    Why: the trunk's instance normalisation takes statistics over the voxels of each map and torch
    refuses a one-voxel map, in training and in inference alike.
    """
    cfg = encoder.config
    if getattr(cfg, "architecture", "vit") != "cnn":
        return
    if all(int(s) <= int(p) for s, p in zip(plan.patch_size, cfg.patch_size)):
        raise ConfigError(f"patch_size {tuple(plan.patch_size)} is too small for this CNN encoder (total stride "
                          f"{tuple(cfg.patch_size)}): its deepest stage would be one voxel.",
                          f"Use a --patch-size / patch_size above {tuple(cfg.patch_size)} (default 48 48 48).")


def _dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of each foreground class present in ``target`` or ``pred`` (absent from both: not scored)."""
    return {c: dice_score(pred == c, target == c) for c in range(1, num_classes)
            if (pred == c).any() or (target == c).any()}
