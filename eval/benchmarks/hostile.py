"""``radfm bench hostile``: the hostile-input corpus (tests/hostile) over ``radfm check`` and the loader.

Why a bench as well as the tests: the figures issue 15 asks for (cases, % clear errors,
tracebacks, peak RSS, inputs unchanged) belong in docs/benchmarks.md with the command that
produced them. Needs a source checkout (the corpus generator lives in tests/hostile).
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from radfm.eval.benchreport import add_output_args, default_md_path, machine_info, write_section

NAME = "hostile"
TITLE = "Hostile inputs: malformed files over radfm check and load_volume"


def _import_corpus() -> Any:
    try:
        import tests.hostile.harness as harness
    except ImportError:
        sys.path.insert(0, str(default_md_path().parent.parent))
        import tests.hostile.harness as harness
    return harness


def run(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"radfm bench {NAME}", description=__doc__)
    parser.add_argument("--procs", type=int, default=2, help="child processes per entry point")
    parser.add_argument("--fuzz-seconds", type=float, default=0.0,
                        help="also run the plain-mutation fuzzer this long (split over the loaders)")
    add_output_args(parser)
    args = parser.parse_args(argv)
    harness = _import_corpus()
    from tests.hostile.corpus import all_cases

    cases = all_cases()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="radfm-hostile-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        _, paths, hashes = harness.build(root, cases)
        build_s = time.perf_counter() - t0
        for mode, names in (("check", [c.name for c in cases]),
                            ("load", [c.name for c in cases if c.stage == "load"])):
            t0 = time.perf_counter()
            results, peak = harness.run_batches(mode, root, names, n_proc=args.procs)
            seconds = time.perf_counter() - t0
            by_cls: dict[str, list[dict]] = collections.defaultdict(list)
            for r in results:
                by_cls[r["cls"]].append(r)
            raw[mode] = {"results": results, "peak_mib": peak, "seconds": seconds}
            rows.append({"entry point": "radfm check (check_path)" if mode == "check" else "load_volume",
                         "cases": len(results), "classes": len(by_cls),
                         "clear errors %": 100.0 * sum(r["clear"] for r in results) / len(results),
                         "tracebacks": sum(r["traceback"] for r in results),
                         "max peak RSS MiB": round(peak, 1), "wall s": round(seconds, 1)})
        changed = harness.unchanged(paths, hashes)
    fuzz = {}
    if args.fuzz_seconds > 0:
        from tests.hostile.fuzz import _seeds, plain_run

        for loader in _seeds():
            fuzz[loader] = plain_run(loader, args.fuzz_seconds / len(_seeds()))
    unclear = [f"{r['name']}: {r['message'][:120]}" for m in raw.values() for r in m["results"] if not r["clear"]]
    notes = (f"{len(cases)} generated cases ({len({c.cls for c in cases})} classes: "
             f"{', '.join(sorted({c.cls for c in cases}))}); corpus built in {build_s:.1f} s; inputs changed: "
             f"{len(changed)}. A clear error is one line, names the file, holds the expected words, never the "
             "patient canary or the temp folder. Peak RSS is each child's VmHWM (cases batched per process). "
             "The real `radfm check/segment/register` CLI and the HTTP upload run in `pytest tests/hostile`.")
    if fuzz:
        notes += " Plain-mutation fuzz, inputs without an escaped exception: " + ", ".join(
            f"{k} {v}" for k, v in fuzz.items()) + "."
    if unclear:
        notes += " NOT clear: " + "; ".join(unclear[:10])
    command = shlex.join(["radfm", "bench", NAME, *argv])
    results = {"name": NAME, "command": command, "rows": rows, "changed": changed, "fuzz": fuzz,
               "unclear": unclear}
    if not args.no_write:
        md = args.out if args.out is not None else default_md_path()
        write_section(md, NAME, title=TITLE, command=command, table=rows, notes=notes, json_path=args.json_path,
                      machine=machine_info(), results={"changed": changed, "fuzz": fuzz, "unclear": unclear})
    for row in rows:
        print(row)
    return results
