"""``radfm segment``: one object from clicks and/or a box, written in the input's own space.

A thin wrapper over :func:`radfm.tasks.segmentation.files.segment_file`. Prompt syntax:

- ``--point i,j,k[,+|-]``: voxel indices of the file as stored (nibabel's array order, 3D Slicer's
  IJK); ``+`` foreground (default), ``-`` background. Repeat for several clicks.
- ``--point-mm x,y,z[,+|-]``: world RAS+ millimetres (3D Slicer's RAS readout).
- ``--box i0,j0,k0,i1,j1,k1``: two opposite corners in voxel indices.

Negative numbers are fine (``--point-mm -12.5,30,4``). A malformed value stops with exit code 2 and a
one-line message (argparse), a prompt outside the image with exit code 2 and the valid range.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from radfm.argtypes import non_negative_int

__all__ = ["parse_box", "parse_point", "register"]


def parse_point(text: str) -> tuple[tuple[float, float, float], int]:
    """``"i,j,k[,+|-]"`` → ``((i, j, k), label)``; argparse turns the error into exit code 2."""
    parts = [p.strip() for p in text.split(",")]
    label = 1
    if parts and parts[-1] in ("+", "-", "fg", "bg"):
        label = 0 if parts.pop() in ("-", "bg") else 1
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"a point needs 3 comma-separated numbers plus an optional +/- (e.g. 120,88,40,+), got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} holds a value that is not a number") from None
    return values, label  # type: ignore[return-value]


def parse_box(text: str) -> tuple[float, ...]:
    """``"i0,j0,k0,i1,j1,k1"`` → six floats."""
    parts = [p.strip() for p in text.split(",") if p.strip() != ""]
    if len(parts) != 6:
        raise argparse.ArgumentTypeError(
            f"a box needs 6 comma-separated voxel indices i0,j0,k0,i1,j1,k1 (two opposite corners), "
            f"got {len(parts)} value(s) in {text!r}")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} holds a value that is not a number") from None


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from radfm.tasks.segmentation.files import segment_file

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in a command-line tool's output
    if args.deidentify and not args.dicom_seg:
        from radfm.errors import InputError

        raise InputError("--deidentify applies to the DICOM SEG output.", "Add --dicom-seg OUT.dcm.")

    points = [p for p, _ in args.point]
    points_mm = [p for p, _ in args.point_mm]
    summary: dict[str, Any] = segment_file(
        args.image, out=args.out, points=points, labels=[lab for _, lab in args.point], points_mm=points_mm,
        labels_mm=[lab for _, lab in args.point_mm], box=args.box, model_dir=args.model, adapter=args.adapter,
        dicom_seg=args.dicom_seg, modality=args.modality, series=args.series, structure=args.structure,
        dtype=args.dtype, deidentify=args.deidentify)
    empty = summary["empty"]
    if empty:
        print(f"radfm segment: the mask is EMPTY (nothing found for the prompt); wrote {summary['mask']} anyway. "
              "Add a click inside the object" + ("" if args.allow_empty else ", or pass --allow-empty to accept it")
              + ".", file=sys.stderr)
    code = 3 if empty and not args.allow_empty else 0
    if args.json:
        print(json.dumps(summary, indent=2))
        return code
    con = Console()
    bb = summary["bbox_voxel"]
    con.print(f"wrote [bold]{summary['mask']}[/] ({summary['voxels']} voxels, {summary['volume_ml']:.2f} ml)")
    if bb:
        con.print(f"  bounding box (native voxels): {bb['min']} .. {bb['max']}; "
                  f"mm (RAS+): {summary['bbox_mm']['min']} .. {summary['bbox_mm']['max']}")
    exp = summary["expected_dice"]
    if summary["score"] is not None:
        con.print(f"  predicted Dice {summary['score']:.3f}" + (f", expected Dice {exp:.3f}" if exp is not None else "")
                  + (" [yellow]LOW CONFIDENCE: add a click[/]" if summary["low_confidence"] else ""))
    if "dicom_seg" in summary:
        con.print(f"  DICOM SEG: {summary['dicom_seg']}")
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radfm segment`` to the core CLI (entry point group ``radfm.commands``)."""
    p = subparsers.add_parser(
        "segment", help="segment one structure from clicks or a box (SAM-style, 3D)",
        description="Prompt-based 3D segmentation. Clicks (--point, --point-mm) and/or a box (--box) mark one "
        "object; the mask is written in the input's own grid (NIfTI etc.) and optionally as a DICOM SEG "
        "referencing the source series. Research software: review every mask.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  radfm segment ct.nii.gz --point 120,88,40 --out liver.nii.gz\n"
               "  radfm segment ct.nii.gz --point 120,88,40 --point 140,90,41,- --out m.nii.gz --json\n"
               "  radfm segment ct.nii.gz --point-mm -12.5,30,4 --out m.nii.gz\n"
               "  radfm segment DICOM_DIR --box 100,80,5,180,160,15 --out m.nii.gz --dicom-seg m.dcm")
    # Let "-12.5,30,4" be a value, not an option (argparse only accepts plain negative numbers).
    p._negative_number_matcher = re.compile(r"^-\d[\d.eE]*(,[-+]?[\d.eE]*)*(,[-+])?$")  # type: ignore[attr-defined]
    p.add_argument("image", help="NIfTI, NRRD, MHA, a DICOM series folder, a DICOM file or .npy/.npz")
    p.add_argument("--point", action="append", type=parse_point, default=[], metavar="I,J,K[,+|-]",
                   help="click in voxel indices of the file as stored (+ foreground, default; - background)")
    p.add_argument("--point-mm", action="append", type=parse_point, default=[], metavar="X,Y,Z[,+|-]",
                   help="click in world RAS+ millimetres (as 3D Slicer shows them)")
    p.add_argument("--box", type=parse_box, default=None, metavar="I0,J0,K0,I1,J1,K1",
                   help="box around the object: two opposite corners in voxel indices")
    p.add_argument("--structure", default=None,
                   help="name of a known structure (e.g. liver): alone, segments it automatically; with clicks, an "
                        "extra prompt; with an --adapter from `radfm adapt`, one of its structures")
    p.add_argument("--allow-empty", action="store_true", help="exit 0 even when the mask comes back empty")
    p.add_argument("--out", required=True, help="output mask file (.nii.gz, .nrrd, .mha, .npy …)")
    p.add_argument("--model", default=None, help="model folder (default: the model shipped with radfm)")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter folder for the encoder, or a folder written by `radfm adapt` (automatic)")
    p.add_argument("--dicom-seg", default=None, metavar="OUT.dcm", help="also write a DICOM SEG (DICOM series input)")
    p.add_argument("--deidentify", action="store_true",
                   help="with --dicom-seg: apply PS3.15 Annex E basic profile (no patient names, IDs, dates or "
                        "private tags in the SEG; UIDs replaced consistently)")
    p.add_argument("--modality", choices=["CT", "MR"], default=None, help="declare the modality")
    p.add_argument("--series", type=non_negative_int, default=None, help="series index when a DICOM folder holds several")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="inference precision (default fp32)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)
    _register_train(subparsers)


def _train(args: argparse.Namespace) -> int:
    from radfm.config import load_config
    from radfm.tasks.segmentation.train import SegRecipe, run_recipe

    print(run_recipe(load_config(SegRecipe, args.config, args.overrides)))
    return 0


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    """``radfm train segmentation -c RECIPE [key=value …]``: the shared encoder + prompt decoder."""
    from radfm.training.cli import train_subparsers

    t = train_subparsers(subparsers).add_parser(
        "segmentation", help="the prompt segmenter and the shared CNN encoder (simulated interaction)",
        description="Train the prompt segmenter (and with it the shared CNN encoder) by simulated interaction "
        "on real labels, pseudo-masks, inserted shapes and phantoms, on accelerate. Writes OUTPUT_DIR/model, "
        "the encoder (encoder_out), loss_curve.png and training_summary.json.",
        epilog="example:\n  radfm train segmentation -c configs/segmentation/starter.yaml train.steps=300",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("-c", "--config", default=None, metavar="RECIPE.yaml",
                   help="e.g. configs/segmentation/starter.yaml (default: the built-in recipe)")
    t.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. train.steps=300 output_dir=runs/x")
    t.set_defaults(func=_train)
