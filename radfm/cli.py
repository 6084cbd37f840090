"""The ``radfm`` command. Every subcommand is a thin wrapper over a public Python function.

Core subcommands (check, demo, bench) live here; tasks add theirs (segment, register,
report, pretrain, adapt, …) through the ``radfm.commands`` entry-point group: each entry is a
function ``register(subparsers)`` that adds its parser and sets ``func(args) -> int``. Errors
caused by the user's input are printed as one paragraph (exit code 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from radfm import __version__, registry
from radfm.argtypes import non_negative_int
from radfm.errors import RadfmError, one_line

console = Console(stderr=True)
log = logging.getLogger("radfm")


def cmd_check(args: argparse.Namespace) -> int:
    """Input check; exit 0 when usable, 1 when an error would ruin a result."""
    from radfm.check import check_path

    report = check_path(args.image, modality=args.modality, series=args.series)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from radfm.demo import run_demo

    index = run_demo(args.out, seed=args.seed, sections=args.section or None,
                     progress=lambda msg: console.print(f"[cyan]radfm demo[/]: {msg}"))
    console.print(f"[green]open {index} in a browser[/]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    names = registry.available("radfm.bench")
    if args.list or not args.name:
        print("\n".join(names) if names else "no benchmarks installed")
        return 0
    run = registry.load("radfm.bench", args.name)
    run(list(args.bench_args))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``radfm register: error: argument --instance-steps: …``).

    Why: the usage block before the error pushed the one line that matters off a short terminal and
    wrapped it; ``--help`` still shows the usage. Subcommand parsers inherit this class.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="radfm",
        description="radfm: radiology foundation models for CT/MRI (NIfTI, DICOM, NRRD, MHA). "
        "Research software: every output is a draft for review by a qualified reader.",
    )
    parser.add_argument("--version", action="version", version=f"radfm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "check", help="check an image before any model runs",
        description="Check orientation, spacing, shape, dtype, intensity range vs modality (CT in HU?), "
        "NaN/Inf, empty volumes and memory needs. Exit code 0: usable; 1: errors found. The input is "
        "only read, never modified.",
    )
    p.add_argument("image", help="NIfTI (.nii/.nii.gz), NRRD, MHA/MHD, a DICOM series folder, a DICOM file or .npy/.npz")
    p.add_argument("--modality", choices=["CT", "MR", "CBCT", "PT"], help="declare the modality instead of "
                   "reading it from DICOM headers or detecting it from intensities")
    p.add_argument("--series", type=non_negative_int, help="index of the series to use when a DICOM folder holds several")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="run the whole pipeline on a simulated case (no downloads)",
                       description="Simulate a CT phantom, run every installed component on it and write "
                       "an HTML page with slice overlays.")
    p.add_argument("--out", default="radfm-demo", help="output folder (default: radfm-demo)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="phantom seed (default: 0)")
    p.add_argument("--section", action="append", help="run only this demo section (repeatable)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run a benchmark and record it in docs/benchmarks.md",
                       description="Run a named benchmark (see --list). Options after the name go to the "
                       "benchmark itself: radfm bench io --help.")
    p.add_argument("name", nargs="?", help="benchmark name")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.add_argument("--list", action="store_true", help="list installed benchmarks")
    p.set_defaults(func=cmd_bench)

    for name in registry.available("radfm.commands"):
        try:
            registry.load("radfm.commands", name)(sub)
        except Exception as exc:  # one broken plugin must not take the whole command down
            log.warning("subcommand %r is unavailable: %s: %s", name, type(exc).__name__, exc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from radfm.phi import install

    install()  # pydicom/highdicom messages quote DICOM header values: withheld (RADFM_LOG_DETAILS=1 shows them)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except RadfmError as exc:
        # Plain text, one line: rich markup would swallow bracketed paths/values and wrap the line.
        print(f"radfm: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
