"""``radfm synthesize IMAGE --task lowdose --out OUT.nii.gz`` and ``radfm train synthesis -c RECIPE``:
thin wrappers over :func:`radfm.tasks.synthesis.synthesize` and :func:`radfm.tasks.synthesis.recipe.run_recipe`."""

from __future__ import annotations

import argparse
import json
import logging

HELP = """\
Image-to-image synthesis on the shared encoder. --task lowdose: a low-dose CT (HU) in, a denoised
CT (HU) out, written in the INPUT's own space (its grid, affine and orientation, radfm.io.save_like).

The shipped model was trained on SIMULATED low-dose noise (projection-domain Poisson + electronic
noise, filtered back-projection) added to a few real CTs; it has not seen real low-dose scans.
--json prints the task, timings and a per-volume quality flag ("ok" or "review" with reasons).
Research software: not for diagnosis; check every result visually.
"""


def run(args: argparse.Namespace) -> int:
    from radfm.io import load_volume, save_like
    from radfm.tasks.synthesis.api import synthesize

    volume = load_volume(args.image, modality=args.modality, series=args.series)
    result = synthesize(volume, task=args.task, model=args.model, bf16=not args.fp32)
    written = str(save_like(result.array, volume, args.out, dtype="float32"))
    summary = {"image": str(args.image), "out": written, **result.stats}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        q = result.stats["quality"]
        print(f"synthesised ({args.task}) {args.image} -> {written} in {result.stats['timings_s']['total']:.2f} s; "
              f"noise estimate {q['input_noise_hu']} -> {q['output_noise_hu']} HU; quality {q['flag']}"
              + (f" ({'; '.join(q['reasons'])})" if q["reasons"] else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radfm synthesize`` and ``radfm train synthesis`` (entry point group ``radfm.commands``)."""
    from radfm.argtypes import non_negative_int

    p = subparsers.add_parser("synthesize", help="image-to-image synthesis (low-dose -> full-dose CT)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="input image (NIfTI, NRRD, MHA, DICOM series folder …)")
    p.add_argument("--task", choices=["lowdose"], default="lowdose", help="synthesis task (default lowdose)")
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="write the synthesised image here")
    p.add_argument("--model", metavar="DIR", help="synthesis model folder (default: the shipped model)")
    p.add_argument("--modality", choices=["CT", "MR"], help="declare the input's modality")
    p.add_argument("--series", type=non_negative_int, metavar="N", help="series index in a multi-series DICOM folder")
    p.add_argument("--fp32", action="store_true", help="run in float32 instead of bf16 autocast")
    p.add_argument("--json", action="store_true", help="print task, timings and the quality flag as JSON")
    p.set_defaults(func=run)
    _register_train(subparsers)


TRAIN_HELP = """\
Train the low-dose CT denoiser on SIMULATED pairs: real CTs listed in the recipe (and optional
phantoms) + projection-domain low-dose noise at doses varied across realisations, on accelerate.
Writes OUTPUT_DIR/model (for `radfm synthesize --model`), loss_curve.png, synthesis_recipe.yaml and
training.json.
"""


def _train(args: argparse.Namespace) -> int:
    from radfm.config import load_config
    from radfm.tasks.synthesis.recipe import SynthRecipe, run_recipe

    logging.getLogger("radfm.tasks.synthesis").setLevel(logging.INFO)
    print(run_recipe(load_config(SynthRecipe, args.config, args.overrides)))
    return 0


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from radfm.training.cli import add_recipe_trainer

    add_recipe_trainer(
        subparsers, "synthesis", help="the low-dose CT denoiser (SIMULATED low-dose noise on real CTs)",
        description=TRAIN_HELP, func=_train,
        examples=["radfm train synthesis -c configs/synthesis/lowdose.yaml",
                  "radfm train synthesis -c configs/synthesis/lowdose.yaml train.steps=50 output_dir=runs/s"],
        config_help="e.g. configs/synthesis/lowdose.yaml", overrides_help="e.g. train.steps=50 real=[] phantoms=2")
