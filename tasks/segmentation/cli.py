"""``radfm segment``: one object from clicks and/or a box, written in the input's own space.

A thin wrapper over :func:`radfm.tasks.segmentation.predictor.segment_file`. Prompt syntax:

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
from typing import Any

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

    from radfm.tasks.segmentation.predictor import segment_file

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in a command-line tool's output

    points = [p for p, _ in args.point]
    points_mm = [p for p, _ in args.point_mm]
    summary: dict[str, Any] = segment_file(
        args.image, out=args.out, points=points, labels=[lab for _, lab in args.point], points_mm=points_mm,
        labels_mm=[lab for _, lab in args.point_mm], box=args.box, model_dir=args.model, adapter=args.adapter,
        dicom_seg=args.dicom_seg, modality=args.modality, series=args.series, structure=args.structure,
        dtype=args.dtype)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    con = Console()
    bb = summary["bbox_voxel"]
    con.print(f"wrote [bold]{summary['mask']}[/] ({summary['voxels']} voxels, {summary['volume_ml']:.2f} ml)")
    if bb:
        con.print(f"  bounding box (native voxels): {bb['min']} .. {bb['max']}; "
                  f"mm (RAS+): {summary['bbox_mm']['min']} .. {summary['bbox_mm']['max']}")
    exp = summary["expected_dice"]
    con.print(f"  predicted IoU {summary['score']:.3f}" + (f", expected Dice {exp:.3f}" if exp is not None else "")
              + (" [yellow]LOW CONFIDENCE: add a click[/]" if summary["low_confidence"] else ""))
    if "dicom_seg" in summary:
        con.print(f"  DICOM SEG: {summary['dicom_seg']}")
    return 0


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
    p.add_argument("--structure", default=None, help="name of a known structure as an extra prompt (e.g. liver)")
    p.add_argument("--out", required=True, help="output mask file (.nii.gz, .nrrd, .mha, .npy …)")
    p.add_argument("--model", default=None, help="model folder (default: the model shipped with radfm)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder for the encoder")
    p.add_argument("--dicom-seg", default=None, metavar="OUT.dcm", help="also write a DICOM SEG (DICOM series input)")
    p.add_argument("--modality", choices=["CT", "MR"], default=None, help="declare the modality")
    p.add_argument("--series", type=int, default=None, help="series index when a DICOM folder holds several")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="inference precision (default fp32)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)
