"""``radfm train synthesis -c configs/synthesis/NAME.yaml``: the recipe and the function it runs.

Output folder: ``model/`` (config.json, model.safetensors, preprocess_plan.json, training.json and,
in LoRA mode, ``encoder_adapter/``), ``loss_curve.png``, ``synthesis_recipe.yaml``, ``training.json``.
Every training pair is SIMULATED (real or phantom CT + projection-domain low-dose noise).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from radfm.config import to_dict
from radfm.data.shared import resolve_recipe_path
from radfm.errors import ConfigError
from radfm.tasks.synthesis.data import NoiseBank, build_bank, phantom_hu, volume_hu
from radfm.tasks.synthesis.model import RadFMSynthConfig, RadFMSynthesis, save_synthesis
from radfm.tasks.synthesis.train import TrainConfig, evaluate_banks, train

log = logging.getLogger(__name__)

__all__ = ["SynthRecipe", "build_banks", "build_model", "run_recipe"]


@dataclass
class SynthRecipe:
    """One synthesis training run (``configs/synthesis/*.yaml``).

    Attributes:
        output_dir: folder for ``model/`` and the training record.
        encoder: ``"shared"`` (radfm's shared CNN, not stored) or ``None`` (a fresh "cnn-tiny"
            encoder trained with the decoder and stored: tests).
        init: continue from this synthesis model folder (a second stage with a fresh schedule);
            ``encoder``, ``decoder_channels`` and ``window`` then come from that folder.
        decoder_channels, window: see :class:`RadFMSynthConfig`.
        real: training CTs, paths or relative to the shared data root; ``NAME@z`` resamples the
            axial plane by ``z`` (a second pixel size of the same scan). A missing one is an error.
        validation: CTs (same syntax) used only to report a validation error, never trained on.
        phantoms: SIMULATED CT phantoms added to the training banks (seeds ``train.seed*1000+500+i``).
        realisations: noise realisations per volume (one dose each); dose_range: dose fractions,
            drawn log-uniformly; views: projection angles.
        cache_dir: where noise banks are cached (``None``: not cached).
        threads: torch CPU threads; cpu: force the CPU.
        train: the optimisation recipe.
    """

    output_dir: str = "runs/synthesis"
    encoder: str | None = "shared"
    init: str | None = None
    decoder_channels: tuple[int, int, int, int] = (48, 32, 24, 16)
    window: tuple[int, int, int] = (16, 96, 96)
    real: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    phantoms: int = 0
    realisations: int = 6
    dose_range: tuple[float, float] = (0.1, 0.5)
    views: int = 360
    cache_dir: str | None = None
    threads: int | None = None
    cpu: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(recipe: SynthRecipe) -> RadFMSynthesis:
    if recipe.init is not None:  # a LoRA model comes back as a peft model (its adapter trains on)
        return RadFMSynthesis.from_pretrained(recipe.init, merge_adapter=False)
    kw = {"decoder_channels": recipe.decoder_channels, "window": recipe.window}
    if recipe.encoder == "shared":
        return RadFMSynthesis.from_shared_encoder(**kw)
    if recipe.encoder is not None:
        raise ConfigError(f"encoder must be 'shared' or null, got {recipe.encoder!r}.")
    return RadFMSynthesis(RadFMSynthConfig(**kw))


def build_banks(recipe: SynthRecipe, names: list[str], *, first_seed: int, phantoms: int = 0) -> list[NoiseBank]:
    """Noise banks of ``names`` (seed ``first_seed + index``) then of ``phantoms`` phantoms."""
    from radfm.io import load_volume

    banks = []
    kw = {"realisations": recipe.realisations, "dose_range": tuple(recipe.dose_range), "views": recipe.views,
          "cache_dir": recipe.cache_dir}
    for i, name in enumerate(names):
        path, _, zoom = name.partition("@")
        volume = load_volume(resolve_recipe_path(path, "CT"), modality="CT")
        hu, spacing = volume_hu(volume, in_plane_zoom=float(zoom or 1.0))
        banks.append(build_bank(name, hu, spacing, seed=first_seed + i, **kw))
    for i in range(phantoms):
        seed = recipe.train.seed * 1000 + 500 + i
        hu, spacing = volume_hu(phantom_hu(seed))
        banks.append(build_bank(f"phantom {seed}", hu, spacing, seed=seed, **kw))
    return banks


def run_recipe(recipe: SynthRecipe) -> Path:
    """Train as ``recipe`` says; returns ``output_dir/model``."""
    from radfm.training.schedule import start_recipe_run
    from radfm.viz import save_curve

    accelerator, out = start_recipe_run(threads=recipe.threads, cpu=recipe.cpu, seed=recipe.train.seed,
                                        output_dir=recipe.output_dir)
    model_dir = out / "model"
    model = build_model(recipe)
    seed0 = recipe.train.seed * 1000
    banks = build_banks(recipe, list(recipe.real), first_seed=seed0, phantoms=recipe.phantoms)
    if not banks:
        raise ConfigError("the recipe has no training volume.", "List real CTs or set phantoms >= 1.")
    val = build_banks(recipe, list(recipe.validation), first_seed=seed0 + 900)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "synthesis_recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    history = train(model, banks, recipe.train, checkpoint_dir=model_dir if main else None,
                    accelerator=accelerator)
    if main:
        trained = history.pop("model")
        save_synthesis(trained, model_dir)
        record: dict[str, Any] = {
            "train_config": {k: v for k, v in to_dict(recipe.train).items() if k != "progress"},
            "recipe": to_dict(recipe), "banks": [{"name": b.name, "shape": list(b.clean.shape),
                                                  "spacing_mm": list(b.spacing), "doses": b.doses.round(3).tolist()}
                                                 for b in banks],
            "seconds": history["seconds"], "steps": history["steps"], "skipped_steps": history["skipped"],
            "final_l1_hu_mean_last50": float(np.mean(history["l1_hu"][-50:])),
            "simulated": "every pair: real/phantom CT + projection-domain low-dose noise (lowdose_sim)",
        }
        if val:
            record["validation"] = evaluate_banks(trained, val, crop=tuple(recipe.train.crop),
                                                  bf16=recipe.train.bf16)
        text = json.dumps(record, indent=2, default=str) + "\n"
        (model_dir / "training.json").write_text(text)
        (out / "training.json").write_text(text)
        k = min(20, len(history["l1_hu"]))
        if k:
            sm = np.convolve(np.asarray(history["l1_hu"]), np.ones(k) / k, mode="valid")
            save_curve(out / "loss_curve.png", list(range(k, len(history["l1_hu"]) + 1)), {"L1 (HU)": sm.tolist()},
                       xlabel="step", ylabel="L1 (HU)", title="low-dose synthesis training (SIMULATED pairs)")
    accelerator.wait_for_everyone()
    return model_dir
