"""``radfm pretrain``: a thin command over :func:`radfm.training.pretrain.run_pretraining`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_recipe_trainer", "cmd_pretrain", "load_pretrain_config", "register", "train_subparsers"]

_DESCRIPTION = """\
Pretrain the shared 3D encoder without labels (masked autoencoding: 75% of the 3D patches of
each crop are hidden and the model learns to fill them in from the rest). The recipe (YAML)
says which volumes are used - SIMULATED CT/MR phantoms, a folder of your own scans
(NIfTI, NRRD, MHA, DICOM series), or the few real volumes installed packages ship - the voxel
spacing and crop size, the model size and the optimiser. Intensities are normalised exactly as
at inference (CT: HU window, MR: percentiles).

Outputs in output_dir: metrics.jsonl, loss_curve.png, checkpoints/ (resumable) and, at the end,
encoder/ (config.json, model.safetensors, preprocess_plan.json) to fine-tune with LoRA.

The same command runs on a CPU, one GPU, or many:
  accelerate launch --num_processes 4 -m radfm.cli pretrain -c recipe.yaml
Pretraining is research software: the encoder is not a diagnostic device.
"""

_EPILOG = """\
examples:
  radfm pretrain -c configs/pretrain/tiny.yaml
  radfm pretrain -c configs/pretrain/starter.yaml output_dir=runs/starter mixed_precision=bf16
  radfm pretrain -c configs/pretrain/starter.yaml --resume         # continue after an interruption
  radfm pretrain -c configs/pretrain/tiny.yaml data.crop_size=[48,48,48] optim.lr=5e-4 steps=500
"""


def train_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-command group of ``radfm train`` (``radfm train TASK``), created on first use.

    Why in the core: every task adds ``radfm train TASK`` through its ``radfm.commands`` entry
    point, and tasks do not import each other; whichever registers first creates the group.
    """
    from radfm.errors import ConfigError

    existing = subparsers.choices.get("train")
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        raise ConfigError("another component registered `radfm train` without sub-commands.",
                          "Register training as `radfm train TASK` (radfm.training.cli.train_subparsers).")
    p = subparsers.add_parser("train", help="train a task model (radfm train TASK --help)",
                              description="Train a task model: every task adds its own sub-command. "
                                          "`radfm train pretrain` is `radfm pretrain`.")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    return p.add_subparsers(dest="train_task", metavar="TASK")


def add_recipe_trainer(subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str,
                       examples: list[str], config_help: str, overrides_help: str,
                       func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """``radfm train NAME [-c RECIPE.yaml] [key.sub=value …]``: the one shape of every task's trainer."""
    t = train_subparsers(subparsers).add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))
    t.add_argument("-c", "--config", default=None, metavar="RECIPE.yaml", help=config_help)
    t.add_argument("overrides", nargs="*", metavar="key.sub=value", help=overrides_help)
    t.set_defaults(func=func)
    return t


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None, *,
                         resume: bool = False) -> Any:
    """Recipe file + ``key.sub=value`` overrides -> ``PretrainConfig`` (unknown keys are errors)."""
    from radfm.config import load_config
    from radfm.training.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, path, overrides)
    if resume:
        cfg.resume = True
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from radfm.training.pretrain import run_pretraining

    cfg = load_pretrain_config(args.config, args.overrides, resume=args.resume)
    # The CLI shows WARNING and above by default; a long run should still report its progress.
    logging.getLogger("radfm.training").setLevel(logging.INFO if args.verbose < 2 else logging.DEBUG)
    path = run_pretraining(cfg)
    print(path)
    return 0


def register(subparsers: Any) -> None:
    """Add ``pretrain`` (and its alias ``train pretrain``) to the ``radfm`` command."""
    _add_pretrain(subparsers.add_parser(
        "pretrain", help="pretrain the shared 3D encoder on CT/MR volumes without labels (MAE)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))
    _add_pretrain(train_subparsers(subparsers).add_parser(
        "pretrain", help="the shared encoder, without labels (= radfm pretrain)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, metavar="RECIPE.yaml",
                   help="pretraining recipe, e.g. configs/pretrain/starter.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="change a recipe setting, e.g. steps=2000 optim.lr=5e-4 output_dir=runs/x "
                        "(an unknown key is an error that lists the valid ones)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in output_dir (same recipe)")
    p.set_defaults(func=cmd_pretrain)


def main(argv: list[str] | None = None) -> int:
    """``python -m radfm.training.cli -c RECIPE …``: the same command without the ``radfm`` launcher
    (for ``accelerate launch -m radfm.training.cli`` and when another subcommand fails to load)."""
    from radfm.cli import console
    from radfm.errors import RadfmError

    parser = argparse.ArgumentParser(prog="radfm-pretrain")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["pretrain", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return cmd_pretrain(args)
    except RadfmError as exc:
        console.print(f"[red]radfm pretrain: error:[/] {exc.problem}")
        if exc.hint:
            console.print(f"  {exc.hint}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
