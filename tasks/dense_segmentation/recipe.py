"""``radfm train dense_segmentation -c configs/dense_segmentation/NAME.yaml``: few-shot adaptation as a recipe.

Why beside ``radfm adapt``: every task trains through ``radfm train TASK -c RECIPE [key=value …]``
(one entry point, recipes parsed strictly by :func:`radfm.config.load_config`), while ``radfm adapt``
stays the short form for a quick run. Both end in :func:`radfm.tasks.dense_segmentation.api.adapt`;
the resolved recipe is written beside the adapter as ``dense_segmentation_recipe.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from radfm.config import to_dict
from radfm.errors import ConfigError, InputError

__all__ = ["DenseRecipe", "run_recipe"]


@dataclass
class DenseRecipe:
    """One few-shot adaptation run.

    Attributes:
        data: labelled cases: an MSD / nnU-Net folder or a manifest ``.csv/.json/.jsonl`` (required).
        shots: K, the number of labelled cases trained on.
        output_dir: the adapter folder to write.
        strategy: "auto" (by K), "linear" (head only), "lora" or "full".
        encoder: base encoder folder; ``None``: radfm's starter encoder.
        labels: source label id → class name (equal names merge); empty: every label.
        steps, lr, patch_size: ``None`` for the strategy's defaults.
    """

    data: str | None = None
    shots: int = 5
    output_dir: str = "runs/dense_segmentation"
    strategy: str = "auto"
    encoder: str | None = None
    labels: dict[int, str] = field(default_factory=dict)
    steps: int | None = None
    lr: float | None = None
    patch_size: list[int] | None = None
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    progress: bool = True


def run_recipe(recipe: DenseRecipe) -> dict[str, Any]:
    """Adapt as ``recipe`` says; returns the summary ``radfm adapt`` prints."""
    from radfm.tasks.dense_segmentation.api import adapt

    if not recipe.data:
        raise ConfigError("the recipe names no data.", "Add data=DIR (MSD / nnU-Net folder or a manifest file).")
    if not Path(recipe.data).exists():
        raise InputError(f"data {recipe.data} does not exist.",
                         "Give a dataset folder (MSD or nnU-Net layout) or a manifest .csv/.json/.jsonl.")
    out = Path(recipe.output_dir)
    result = adapt("segmentation", data=recipe.data, shots=recipe.shots, strategy=recipe.strategy,
                   encoder=recipe.encoder, out_dir=out, seed=recipe.seed, steps=recipe.steps,
                   patch_size=tuple(recipe.patch_size) if recipe.patch_size else None, lr=recipe.lr,
                   label_names={int(k): str(v) for k, v in recipe.labels.items()} or None,
                   device=recipe.device, progress=recipe.progress, bf16=recipe.bf16)
    (out / "dense_segmentation_recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    return {"out_dir": str(result.out_dir), "strategy": result.strategy, "train_cases": result.train_cases,
            "trainable": result.trainable, "metrics": result.metrics}
