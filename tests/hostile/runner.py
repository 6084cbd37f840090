"""Run corpus cases through one entry point in this process and report, as JSON, what each gave.

Used as a child process (``python -m tests.hostile.runner MODE ROOT NAMES...``) so the peak
memory it prints (VmHWM: this process's own high-water mark, reset by exec) belongs to the
cases alone. A result is "clear" when the error is one line, names the file and holds one of
the case's expected words; "traceback" when anything other than a radfm user error escaped.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path

from tests.hostile.corpus import CANARY, Case, all_cases


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def judge(case: Case, path: Path, message: str | None, crashed: bool) -> dict:
    """Is ``message`` a clear error for ``case``? (one line, names the file, expected words, no PHI)."""
    text = (message or "").strip()
    low = text.lower()
    names = {path.name.lower(), path.parent.name.lower()}
    if path.is_dir():  # a series: naming the folder or the broken slice in it both point at the problem
        names |= {p.name.lower() for p in path.iterdir()}
    out = {"name": case.name, "cls": case.cls, "message": text[:300], "traceback": crashed,
           "one_line": "\n" not in text, "names_file": any(n in low for n in names),
           "expected": any(w.lower() in low for w in case.expect), "phi": CANARY.lower() in low or "4711" in low,
           "leaks_path": str(path.parent.parent).lower() in low}
    out["clear"] = bool(text) and not crashed and out["one_line"] and out["names_file"] and out["expected"] \
        and not out["phi"] and not out["leaks_path"]
    return out


def run_check(case: Case, path: Path) -> dict:
    from radfm.check import check_path
    try:
        report = check_path(path)
    except BaseException:
        return judge(case, path, traceback.format_exc(), True)
    errors = report.errors
    if not errors:
        return judge(case, path, "", False)
    f = errors[0]
    # check's report names the file on its first line; the finding itself is the message
    return judge(case, path, f"{Path(str(report.path)).name}: {f.code}: {f.message} {f.hint}".replace("\n", "; "),
                 False)


def run_load(case: Case, path: Path) -> dict:
    from radfm.errors import RadfmError, one_line
    from radfm.io import load_volume

    try:
        load_volume(path)
    except RadfmError as exc:
        return judge(case, path, one_line(exc), False)
    except BaseException:
        return judge(case, path, traceback.format_exc(), True)
    return judge(case, path, "", False)


def main(argv: list[str]) -> int:
    mode, root, *names = argv
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    by_name = {c.name: c for c in all_cases()}
    paths = json.loads(Path(root, "paths.json").read_text())
    run = run_check if mode == "check" else run_load
    results = [run(by_name[n], Path(paths[n])) for n in names]
    print(json.dumps({"results": results, "vm_hwm_mib": vm_hwm_mib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
