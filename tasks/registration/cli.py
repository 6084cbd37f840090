"""``radfm register FIXED MOVING`` and ``radfm train registration -c RECIPE``: thin wrappers over
:func:`radfm.tasks.registration.register` and :func:`radfm.tasks.registration.recipe.run_recipe`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from radfm.argtypes import non_negative_int

log = logging.getLogger(__name__)

HELP = """\
Deformable registration of MOVING onto FIXED (3D NIfTI, NRRD, MHA, DICOM series …).

Outputs are written in the FIXED image's own space (its grid and affine, via radfm.io.save_like):
  --out-warped   the moving image resampled onto the fixed grid;
  --out-field    the displacement field as a 4D NIfTI (X, Y, Z, 3), float32, in MILLIMETRES along
                 world RAS+ axes (x towards patient Right, y Anterior, z Superior), stored on the
                 fixed grid. Convention: for the fixed voxel at world point p, the corresponding
                 moving point is p + d(p), i.e. warped(p) = moving(p + d(p)). ITK/ANTs displacement
                 fields use LPS: negate the first two components to use it there;
  --out-labels   the moving labels (--labels, on the moving grid) warped by nearest neighbour.

The moving image is first brought onto the fixed grid through world coordinates, so different
grids, spacings and orientations are fine. --json prints folding % (voxels with det J <= 0),
Jacobian statistics and the run time. Research software: check every result visually.
"""


def _to_jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_to_jsonable(v) for v in o]
    if isinstance(o, float) and o != o:
        return None
    return o


def run(args: argparse.Namespace) -> int:
    """Load, register, write the requested outputs; print a summary (or JSON)."""
    from radfm.io import load_volume, save_like
    from radfm.tasks.registration.api import register as do_register

    fixed = load_volume(args.fixed, modality=args.fixed_modality)
    moving = load_volume(args.moving, modality=args.moving_modality)
    labels = load_volume(args.labels) if args.labels else None
    if args.out_labels and labels is None:
        from radfm.errors import InputError

        raise InputError("--out-labels needs --labels (a label map on the moving image's grid).")
    result = do_register(fixed, moving, model=args.model, labels=labels, instance_steps=args.instance_steps,
                         diffeomorphic=True if args.diffeomorphic else None, similarity=args.similarity,
                         prealign=args.prealign, bf16=not args.fp32)
    written: dict[str, str] = {}
    if args.out_warped:
        written["warped"] = str(save_like(result.warped.array, fixed, args.out_warped, dtype="float32"))
    if args.out_field:
        written["field"] = str(save_like(result.field_world(), fixed, args.out_field, dtype="float32"))
    if args.out_labels and result.warped_labels is not None:
        written["labels"] = str(save_like(result.warped_labels.array, fixed, args.out_labels))
    summary = {"fixed": str(args.fixed), "moving": str(args.moving), "outputs": written, **result.stats}
    if args.json:
        print(json.dumps(_to_jsonable(summary), indent=2))
    else:
        j = result.stats["jacobian"]
        print(f"registered {Path(args.moving).name} -> {Path(args.fixed).name} in {result.stats['runtime_s']:.2f} s; "
              f"folding {result.stats['folding_percent']:.3f} % of voxels; det J min {j['min']:.3f}, "
              f"mean {j['mean']:.3f}, max {j['max']:.3f}")
        for k, v in written.items():
            print(f"  {k}: {v}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radfm register`` to the radfm CLI (entry point group ``radfm.commands``)."""
    p = subparsers.add_parser("register", help="deformable registration of two 3D images",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fixed", help="fixed (target) image")
    p.add_argument("moving", help="moving image, warped onto the fixed one")
    p.add_argument("--out-warped", metavar="W.nii.gz", help="write the warped moving image here")
    p.add_argument("--out-field", metavar="F.nii.gz", help="write the displacement field here (mm, RAS+, see above)")
    p.add_argument("--labels", metavar="L.nii.gz", help="label map on the MOVING image's grid to carry along")
    p.add_argument("--out-labels", metavar="WL.nii.gz", help="write the warped labels here")
    p.add_argument("--model", metavar="DIR", help="registration model directory (default: the shipped model)")
    p.add_argument("--diffeomorphic", action="store_true",
                   help="force an invertible (diffeomorphic) field via scaling and squaring")
    p.add_argument("--instance-steps", type=non_negative_int, default=0, metavar="N",
                   help="refine the network's field with N optimisation steps on this pair (default 0)")
    p.add_argument("--similarity", choices=["ncc", "mi"], default="ncc",
                   help="ncc for same-modality pairs, mi (mutual information) for CT<->MR (default ncc)")
    p.add_argument("--prealign", choices=["none", "moments", "affine"], default="none",
                   help="classical affine pre-alignment with SimpleITK (default none)")
    p.add_argument("--fixed-modality", choices=["CT", "MR"], help="declare the fixed image's modality")
    p.add_argument("--moving-modality", choices=["CT", "MR"], help="declare the moving image's modality")
    p.add_argument("--fp32", action="store_true", help="run the network in float32 instead of bf16 autocast")
    p.add_argument("--json", action="store_true", help="print folding %%, Jacobian stats and runtime as JSON")
    p.set_defaults(func=run)
    _register_train(subparsers)


TRAIN_HELP = """\
Train the registration model on SIMULATED pairs: each step warps a phantom (or a real volume
listed in the recipe) by a known smooth random field, and the network learns to recover it
(field supervision + similarity + smoothness + folding penalty), on accelerate (CPU, one GPU,
or `accelerate launch --num_processes N -m radfm.cli train registration ...`).

Writes OUTPUT_DIR/model (a directory for `radfm register --model`), loss_curve.png,
registration_recipe.yaml and training.json. Research software: check every result visually.
"""


def _train(args: argparse.Namespace) -> int:
    from radfm.config import load_config
    from radfm.tasks.registration.recipe import RegRecipe, run_recipe

    # The CLI shows WARNING and above by default; a long run should still report where it writes.
    logging.getLogger("radfm.tasks.registration").setLevel(logging.INFO)
    print(run_recipe(load_config(RegRecipe, args.config, args.overrides)))
    return 0


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    """``radfm train registration -c RECIPE [key=value …]`` under the core's ``radfm train`` group."""
    from radfm.training.cli import add_recipe_trainer

    add_recipe_trainer(
        subparsers, "registration", help="the deformable registration model (simulated pairs with known fields)",
        description=TRAIN_HELP, func=_train,
        examples=["radfm train registration -c configs/registration/starter.yaml",
                  "radfm train registration -c configs/registration/starter.yaml train.steps=300 output_dir=runs/reg"],
        config_help="e.g. configs/registration/starter.yaml (default: the built-in recipe)",
        overrides_help="e.g. train.steps=300 output_dir=runs/x real=[]")
