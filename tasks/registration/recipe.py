"""``radfm train registration -c configs/registration/NAME.yaml``: the recipe and the function it runs.

Why a recipe file: the shipped model's settings (phantom subjects, the real template, crop sizes,
loss weights, schedule) used to live in command-line flags and a prose note in the model card;
as YAML parsed strictly by :func:`radfm.config.load_config` (unknown keys are errors, dotted
overrides such as ``train.steps=300``) a run is reproducible from one file.

Output folder (``output_dir``): ``model/`` (config.json, model.safetensors, preprocess_plan.json,
training.json: a directory ``RadFMRegistration.from_pretrained`` and ``radfm register --model``
read), ``loss_curve.png``, ``registration_recipe.yaml`` (the resolved recipe) and ``training.json``.
Every training pair is SIMULATED (a known random field warps a phantom or real volume).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from radfm.config import to_dict
from radfm.data.shared import resolve_recipe_path
from radfm.errors import ConfigError
from radfm.tasks.registration.model import RadFMRegConfig, RadFMRegistration, save_registration
from radfm.tasks.registration.train import (
    Subject,
    TrainConfig,
    phantom_subjects,
    subject_from_volume,
    train,
)

log = logging.getLogger(__name__)

__all__ = ["RegRecipe", "build_model", "build_subjects", "run_recipe"]


@dataclass
class RegRecipe:
    """One registration training run (``configs/registration/*.yaml``).

    Attributes:
        output_dir: folder for ``model/``, ``loss_curve.png`` and the training record.
        encoder: ``None`` (a fresh tiny encoder, trained in full: the shipped model),
            ``"shared"`` (radfm's shared CNN encoder, LoRA saved apart in ``model/encoder_adapter``),
            ``"starter"`` (radfm's ViT starter encoder; frozen trunk, not stored) or a
            ``RadFMEncoder`` directory (LoRA on it unless ``train.encoder_mode`` says otherwise).
        init: continue from this registration model directory (a second stage).
        diffeomorphic: integrate a stationary velocity field (scaling and squaring).
        phantoms: number of SIMULATED phantom subjects; their seeds are
            ``train.seed * 1000 + [0, phantoms)`` (alternating CT/MR, torso/head).
        phantom_shape: phantom grid in voxels at the model's spacing.
        real: real volumes warped by random fields: paths, or paths relative to the shared
            data root (``radfm.data.shared.shared_data_root``). A missing one is an error, so a
            recipe never silently trains on less than it says.
        stop_after: end after this many steps while the schedule spans ``train.steps``
            (the shipped model's first stage was stopped this way).
        checkpoint_every: save ``model/`` every this many steps (with the adapter apart in LoRA mode).
        threads: torch CPU threads (1 is fastest on a machine shared with other jobs).
        cpu: force the CPU even where a GPU is present (``Accelerator(cpu=True)``).
        train: the optimisation and loss recipe (:class:`TrainConfig`).
    """

    output_dir: str = "runs/registration"
    encoder: str | None = None
    init: str | None = None
    diffeomorphic: bool = False
    phantoms: int = 16
    phantom_shape: tuple[int, int, int] = (80, 80, 80)
    real: list[str] = field(default_factory=list)
    stop_after: int | None = None
    checkpoint_every: int = 100
    threads: int | None = None
    cpu: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(recipe: RegRecipe) -> RadFMRegistration:
    """The model the recipe starts from (``init``, the starter encoder, an encoder folder, or fresh)."""
    from radfm.models import RadFMEncoder

    if recipe.init is not None:  # a shared-encoder model comes back as a peft model (its adapter trains on)
        return RadFMRegistration.from_pretrained(recipe.init, merge_adapter=False)
    if recipe.encoder == "shared":
        return RadFMRegistration.from_shared_encoder(diffeomorphic=recipe.diffeomorphic)
    if recipe.encoder == "starter":
        return RadFMRegistration.from_starter_encoder(diffeomorphic=recipe.diffeomorphic)
    if recipe.encoder is not None:
        encoder = RadFMEncoder.from_pretrained(recipe.encoder)
        model = RadFMRegistration(RadFMRegConfig(encoder_config=encoder.config.to_dict(),
                                                 diffeomorphic=recipe.diffeomorphic))
        model.encoder.load_state_dict(encoder.state_dict())
        return model
    return RadFMRegistration(RadFMRegConfig(diffeomorphic=recipe.diffeomorphic))


def _encoder_mode(recipe: RegRecipe) -> Literal["full", "frozen", "lora"]:
    """The encoder mode the recipe implies when ``train.encoder_mode`` is left at "full" for a
    pretrained encoder: the starter encoder stays frozen, the shared CNN gets LoRA (saved apart).
    Another encoder folder is trained in full (its weights are then stored in the checkpoint)."""
    if recipe.train.encoder_mode != "full" or recipe.encoder is None or recipe.init is not None:
        return recipe.train.encoder_mode
    return {"starter": "frozen", "shared": "lora"}.get(recipe.encoder, "full")


def build_subjects(recipe: RegRecipe, spacing: float) -> list[Subject]:
    """Phantom subjects (seeds ``train.seed * 1000 + i``) then the recipe's real volumes."""
    from radfm.io import load_volume

    first = recipe.train.seed * 1000
    subjects = phantom_subjects(range(first, first + recipe.phantoms), shape=recipe.phantom_shape,
                                spacing=spacing)
    for name in recipe.real:
        path = resolve_recipe_path(name, "real volume")
        subjects.append(subject_from_volume(load_volume(path), spacing=spacing, name=path.name))
    if not subjects:
        raise ConfigError("the recipe has no training subject.", "Set phantoms >= 1 or list real volumes.")
    return subjects


def _save_curve(out: Path, history: dict[str, Any]) -> Path:
    """``loss_curve.png``: training loss and endpoint error (voxels) per step, smoothed over 20 steps."""
    from radfm.viz import save_curve

    def smooth(v: list[float]) -> list[float]:
        a = np.asarray(v, dtype=np.float64)
        k = min(20, len(a))
        return [float(x) for x in np.convolve(a, np.ones(k) / k, mode="valid")] if k else []

    loss, epe = smooth(history["loss"]), smooth(history["epe_vox"])
    xs = list(range(len(history["loss"]) - len(loss) + 1, len(history["loss"]) + 1))
    return save_curve(out / "loss_curve.png", xs, {"training loss": loss, "endpoint error (voxels)": epe},
                      xlabel="step", ylabel="loss / EPE", title="registration training (SIMULATED pairs)")


def run_recipe(recipe: RegRecipe) -> Path:
    """Train as ``recipe`` says; returns ``output_dir/model`` (a registration model directory)."""
    from radfm.training.schedule import start_recipe_run

    accelerator, out = start_recipe_run(threads=recipe.threads, cpu=recipe.cpu, seed=recipe.train.seed,
                                        output_dir=recipe.output_dir)
    model_dir = out / "model"
    model = build_model(recipe)
    mode = _encoder_mode(recipe)
    cfg = TrainConfig(**{**vars(recipe.train), "encoder_mode": mode})
    subjects = build_subjects(recipe, model.config.target_spacing[0])
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "registration_recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    log.info("training registration on %d subject(s), encoder mode %s, %d process(es)", len(subjects), mode,
             accelerator.num_processes)
    history = train(model, subjects, cfg, checkpoint_dir=model_dir if main else None,
                    checkpoint_every=recipe.checkpoint_every, stop_after=recipe.stop_after,
                    accelerator=accelerator)
    if main:
        save_registration(history.pop("model"), model_dir)
        record = {"train_config": {k: v for k, v in to_dict(cfg).items() if k != "progress"},
                  "recipe": to_dict(recipe), "subjects": [s.name for s in subjects],
                  "seconds": history["seconds"], "steps": history["steps"],
                  "final_loss_mean_last50": float(np.nanmean(history["loss"][-50:])),
                  "final_epe_vox_mean_last50": float(np.nanmean(history["epe_vox"][-50:])),
                  "skipped_steps": history["skipped"],
                  "encoder": recipe.encoder or (f"init {recipe.init}" if recipe.init else "fresh tiny (8^3 patches)")}
        text = json.dumps(record, indent=2, default=str) + "\n"
        (model_dir / "training.json").write_text(text)
        (out / "training.json").write_text(text)
        _save_curve(out, history)
        log.info("saved %s after %.0f s", model_dir, history["seconds"])
    accelerator.wait_for_everyone()
    return model_dir
