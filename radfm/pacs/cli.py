"""``radfm pacs series|pull|push``: a study in from a DICOMweb server, SEG / SR objects back.

The round trip a hospital engineer runs::

    radfm pacs series http://pacs:8042/dicom-web --study 1.2.840...      # which series (no identifiers)
    radfm pacs pull   http://pacs:8042/dicom-web --study 1.2.840... --series-index 1 --out study/
    radfm segment study/series_001 --point 120,88,10 --out liver.nii.gz --dicom-seg liver_seg.dcm
    radfm pacs push   http://pacs:8042/dicom-web liver_seg.dcm

A bearer token, when the server needs one, comes from ``$RADFM_DICOMWEB_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from radfm.argtypes import positive_int

if TYPE_CHECKING:
    from radfm.pacs.dicomweb import PacsClient

__all__ = ["register"]


def _client(args: argparse.Namespace) -> PacsClient:
    from radfm.pacs.dicomweb import PacsClient

    return PacsClient(args.url)


def _series(args: argparse.Namespace) -> int:
    listed = [s.public() for s in _client(args).series(args.study)]
    if args.json:
        print(json.dumps({"series": listed}, indent=2))
    else:
        for s in listed:
            print(f"{s['index']:3d}  {s['modality'] or '?':4s}  series number {s['series_number']}  "
                  f"{s['instances'] if s['instances'] is not None else '?'} instance(s)")
    return 0


def _pull(args: argparse.Namespace) -> int:
    result = _client(args).pull(args.study, args.out, index=args.series_index, series_number=args.series_number,
                                progress=not args.json)
    summary = {"folder": str(result.folder), "series": [str(p) for p in result.series], "instances": result.instances}
    print(json.dumps(summary, indent=2) if args.json else
          f"wrote {result.instances} instance(s) in {len(result.series)} series under {result.folder}")
    return 0


def _push(args: argparse.Namespace) -> int:
    result = _client(args).push(args.paths)
    summary = {"stored": result.stored, "failed": result.failed}
    print(json.dumps(summary) if args.json else f"stored {result.stored} object(s), {result.failed} refused")
    return 0 if result.failed == 0 else 4


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radfm pacs`` to the core CLI (entry point group ``radfm.commands``)."""
    p = subparsers.add_parser("pacs", help="pull a study from a DICOMweb server, push SEG / SR back",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="pacs_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("url", help="DICOMweb root, e.g. http://localhost:8042/dicom-web")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")

    s = sub.add_parser("series", help="list a study's series (position, modality, number, instances)")
    common(s)
    s.add_argument("--study", required=True, help="StudyInstanceUID")
    s.set_defaults(func=_series)

    pull = sub.add_parser("pull", help="write a study's series (or one) as DICOM files under a new folder")
    common(pull)
    pull.add_argument("--study", required=True, help="StudyInstanceUID")
    pick = pull.add_mutually_exclusive_group()
    pick.add_argument("--series-index", type=positive_int, default=None, help="position in `radfm pacs series`")
    pick.add_argument("--series-number", type=int, default=None, help="the series' SeriesNumber")
    pull.add_argument("--out", required=True, help="a new (or empty) folder; series go to OUT/series_NNN/")
    pull.set_defaults(func=_pull)

    push = sub.add_parser("push", help="store DICOM files (SEG, SR, …; folders are searched) on the server")
    common(push)
    push.add_argument("paths", nargs="+", help="DICOM files or folders")
    push.set_defaults(func=_push)
