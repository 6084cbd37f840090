"""``radfm adapt TASK --data DIR --shots K``: the command-line face of :func:`radfm.tasks.dense_segmentation.adapt`.

Registered through the ``radfm.commands`` entry point (``register``), so the core CLI never imports
the task package itself.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from radfm.argtypes import non_negative_int, positive_float, positive_int
from radfm.errors import InputError

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Adapt the shared encoder to a segmentation task from K labelled cases and write an adapter folder
(peft adapter_config.json + adapter_model.safetensors, preprocess_plan.json, radfm_adapter.json).

Strategies: "linear" trains the dense head only (frozen encoder); "lora" adds LoRA to the encoder's
attention/MLP layers; "full" trains every weight; "auto" (default) picks by K: K <= 2 LoRA r=4 with
strong augmentation, K <= 10 LoRA r=8, K <= 50 LoRA r=16, more: full fine-tuning.

The training cases are the first K of a seeded permutation of the data; up to two unused labelled
cases are predicted afterwards for a held-out Dice. Research software: check every mask."""


def _labels(text: str | None) -> dict[int, str] | None:
    """``"5=liver,2=kidneys,3=kidneys"`` → ``{5: "liver", 2: "kidneys", 3: "kidneys"}``."""
    if not text:
        return None
    out: dict[int, str] = {}
    for item in text.split(","):
        key, sep, name = item.partition("=")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise InputError(f"--labels item {item!r} is not ID=NAME.", 'Example: --labels "5=liver,2=kidney,3=kidney".')
        out[int(key)] = name.strip()
    return out


def cmd_adapt(args: argparse.Namespace) -> int:
    """Run :func:`adapt` and print where the adapter went and how it did."""
    from radfm.tasks.dense_segmentation.api import adapt

    data = Path(args.data)
    if not data.exists():
        raise InputError(f"--data {data} does not exist.",
                         "Give a dataset folder (MSD or nnU-Net layout) or a manifest .csv/.json/.jsonl.")
    if args.encoder is not None and not Path(args.encoder).is_dir():
        raise InputError(f"--encoder {args.encoder} is not a directory.",
                         "Give the folder of a saved encoder (config.json + model.safetensors).")
    out = Path(args.out or f"radfm-adapter-{args.task}")
    result = adapt(args.task, data=data, shots=args.shots, strategy=args.strategy, encoder=args.encoder,
                   out_dir=out, seed=args.seed, steps=args.steps,
                   patch_size=tuple(args.patch_size) if args.patch_size else None, lr=args.lr,
                   label_names=_labels(args.labels), device=args.device, progress=not args.quiet,
                   bf16=args.bf16)
    summary = {"out_dir": str(result.out_dir), "strategy": result.strategy, "train_cases": result.train_cases,
               "trainable": result.trainable, "metrics": result.metrics}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _train(args: argparse.Namespace) -> int:
    """``radfm train dense_segmentation -c RECIPE [key=value …]``."""
    from radfm.config import load_config
    from radfm.tasks.dense_segmentation.recipe import DenseRecipe, run_recipe

    summary = run_recipe(load_config(DenseRecipe, args.config, args.overrides))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from radfm.training.cli import add_recipe_trainer

    add_recipe_trainer(
        subparsers, "dense_segmentation",
        help="few-shot automatic segmentation: LoRA / head / full on K labelled cases (= radfm adapt)",
        description=_DESCRIPTION, func=_train,
        examples=["radfm train dense_segmentation -c configs/dense_segmentation/fewshot.yaml "
                  "data=cases/manifest.csv shots=3 output_dir=adapters/liver"],
        config_help="e.g. configs/dense_segmentation/fewshot.yaml (default: the built-in recipe)",
        overrides_help="e.g. data=DIR shots=3 labels.5=liver")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``adapt`` to the ``radfm`` command."""
    p = subparsers.add_parser("adapt", help="few-shot adaptation of the encoder to a task (LoRA / head / full)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["segmentation"], help="what to adapt to (segmentation for now)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="labelled cases: MSD / nnU-Net folder, or a manifest .csv/.json/.jsonl (image, label)")
    p.add_argument("--shots", required=True, type=positive_int, metavar="K", help="number of labelled cases to train on")
    p.add_argument("--strategy", choices=["auto", "linear", "lora", "full"], default="auto",
                   help="linear = head only, lora, full, or auto by K (default: auto)")
    p.add_argument("--encoder", metavar="DIR", default=None,
                   help="encoder folder (RadFMEncoder.save_pretrained); default: radfm's starter encoder")
    p.add_argument("--out", metavar="DIR", default=None, help="adapter folder to write (default: radfm-adapter-TASK)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimiser steps (default: 150 + 25 K, at most 600)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of case choice, patches, augmentation, init (default 0)")
    p.add_argument("--patch-size", type=positive_int, nargs=3, metavar=("D", "H", "W"), default=None,
                   help="training patch / inference window in voxels after resampling (default 48 48 48)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--labels", default=None, metavar="ID=NAME,...",
                   help='label ids to learn; equal names merge, e.g. "5=liver,2=kidney,3=kidney" (default: all)')
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)
    _register_train(subparsers)
