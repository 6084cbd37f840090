"""Writing benchmark results: machine facts, timing, markdown tables and one section per benchmark.

Why this shape: ``docs/benchmarks.md`` is shared by every benchmark, and each run must refresh
only its own numbers. Each benchmark owns the text between ``<!-- bench:NAME:start -->`` and
``<!-- bench:NAME:end -->``; everything else in the file is left byte-identical. Every section
states the exact command, the date and the machine, and the raw numbers go to
``docs/bench/NAME.json`` so a table can be re-derived or plotted later.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import numbers
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Timing",
    "add_output_args",
    "default_md_path",
    "format_value",
    "machine_info",
    "machine_line",
    "markdown_table",
    "parse_with_threads",
    "publish",
    "timed",
    "write_section",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_MD_HEADER = (
    "# radfm benchmarks\n\n"
    "Each section below is written by `radfm bench NAME` and replaced on every run; the raw numbers\n"
    "are in `bench/NAME.json`.\n"
)


# --------------------------------------------------------------------------- machine facts
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """Facts that decide how fast a benchmark can run here (JSON-serialisable).

    Keys: ``date`` (UTC ISO), ``cpu``, ``cores_logical``, ``cores_usable`` (this process's CPU
    affinity, which containers restrict), ``ram_gib``, ``python``, ``platform``, ``torch``,
    ``torch_threads`` and, when CUDA is available, ``gpu`` (device name) and ``cuda``.
    """
    import psutil
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count() or 1,
        "cores_usable": usable,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One human line describing ``machine_info()`` for a docs section."""
    gpu = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    return (f"{info.get('cpu', '?')}, {info.get('cores_usable', '?')} usable cores "
            f"({info.get('cores_logical', '?')} logical), {info.get('ram_gib', '?')} GiB RAM, {gpu}; "
            f"torch {info.get('torch', '?')} with {info.get('torch_threads', '?')} threads, "
            f"Python {info.get('python', '?')}")


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock seconds of repeated calls (``time.perf_counter``); ``result`` is the last return value."""

    median_s: float
    min_s: float
    times_s: list[float]
    result: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "min_s": self.min_s, "repeats": len(self.times_s),
                "times_s": self.times_s}


def timed(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed; report median and min.

    Why the median: this 2-core machine is noisy (±20 %), and the median of a few runs is stable
    where the mean is not; the min shows the best case with warm caches.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times: list[float] = []
    for _ in range(repeats):
        result = None  # free the previous result first so peak memory stays one result
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return Timing(median_s=float(statistics.median(times)), min_s=float(min(times)), times_s=times,
                  result=result)


# --------------------------------------------------------------------------- markdown
def format_value(value: Any, precision: int = 3) -> str:
    """Format one table cell: floats to ``precision`` significant digits without needless exponents.

    Large numbers keep all their integer digits (``1234.5 → "1234"`` at precision 3), small ones
    keep ``precision`` significant digits (``0.001234 → "0.00123"``), below 1e-4 or from 1e9 up
    exponent notation is used; nan/inf print as such; ``None`` prints empty.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        mag = math.floor(math.log10(abs(v)))
        if mag < -4 or mag >= 9:
            return f"{v:.{max(precision - 1, 0)}e}"
        decimals = max(0, precision - 1 - mag)
        return f"{v:.{decimals}f}"
    if isinstance(value, (list, tuple)):
        return "×".join(format_value(v, precision) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def markdown_table(rows: Sequence[dict[str, Any]], precision: int = 3) -> str:
    """A GitHub markdown table of ``rows``; columns are the union of keys in first-seen order.

    Numeric columns are right-aligned; a missing key is an empty cell; ``precision`` is significant
    digits (:func:`format_value`). Tuples/lists print joined with ``×`` (shapes). No rows → ``""``.
    """
    if not rows:
        return ""
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    numeric = {c: all(_is_number(r[c]) for r in rows if r.get(c) is not None) and any(
        r.get(c) is not None for r in rows) for c in cols}
    head = "| " + " | ".join(format_value(c) for c in cols) + " |"
    rule = "|" + "|".join("---:" if numeric[c] else "---" for c in cols) + "|"
    body = ["| " + " | ".join(format_value(r.get(c), precision) for c in cols) + " |" for r in rows]
    return "\n".join([head, rule, *body])


# --------------------------------------------------------------------------- paths
def default_md_path(start: Path | None = None) -> Path:
    """``docs/benchmarks.md`` of the radfm checkout containing ``start`` (default: the cwd).

    Why not relative to this file: an installed wheel has no repository. We walk up from the
    working directory to the first folder whose ``pyproject.toml`` names the ``radfm`` project;
    outside a checkout the result is ``./docs/benchmarks.md``. Benchmarks expose ``--out`` to override.
    """
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        pp = d / "pyproject.toml"
        if pp.is_file():
            with contextlib.suppress(OSError):
                if re.search(r'^name\s*=\s*"radfm"', pp.read_text(), flags=re.M):
                    return d / "docs" / "benchmarks.md"
    return here / "docs" / "benchmarks.md"


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``--out`` / ``--json`` / ``--no-write`` options every benchmark shares."""
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file whose bench section is replaced (default: docs/benchmarks.md "
                             "of the radfm checkout around the current directory)")
    parser.add_argument("--json", type=Path, default=None, dest="json_path",
                        help="raw results JSON (default: bench/NAME.json beside --out)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no files")


# --------------------------------------------------------------------------- sections
def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the shared markdown between concurrent benchmark runs.

    The lock file lives in the temp dir (named by a hash of the path), not beside the docs, so the
    repository gains no stray file; locking the markdown itself would not work since it is replaced.
    """
    try:
        import fcntl
    except ImportError:  # Windows: best effort, no lock
        yield
        return
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"radfm-bench-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o: Any) -> Any:
    """nan/inf → None-safe JSON (strict JSON has no NaN); they become the strings "nan"/"inf"."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_section(md_path: Path, name: str, *, title: str, command: str,
                  table: Sequence[dict[str, Any]] | str, notes: str = "", json_path: Path | None = None,
                  results: dict[str, Any] | None = None, machine: dict[str, Any] | None = None,
                  precision: int = 3) -> Path:
    """Replace (or append) the ``NAME`` section of ``md_path`` and write the raw results JSON.

    Args:
        md_path: the markdown file (created with a short header if missing).
        name: section id, ``[A-Za-z0-9_.-]+`` (the benchmark name, e.g. ``"io"``).
        title: section heading.
        command: the exact command that produced the numbers (shown verbatim).
        table: rows for :func:`markdown_table`, or ready markdown.
        notes: markdown placed under the table (method, caveats).
        json_path: raw results file; default ``<md dir>/bench/NAME.json``.
        results: extra raw data for the JSON (the table rows are always included).
        machine: ``machine_info()`` of the run; measured now when omitted.
        precision: significant digits of table numbers.

    Returns the JSON path. Only the text between this section's markers changes; every other byte
    of the file is kept. A start marker without its end marker is an error (nothing is written).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"section name must match {_NAME_RE.pattern}, got {name!r}")
    md_path = Path(md_path)
    json_path = Path(json_path) if json_path is not None else md_path.parent / "bench" / f"{name}.json"
    machine = machine if machine is not None else machine_info()
    table_md = table if isinstance(table, str) else markdown_table(table, precision=precision)
    try:
        json_ref = os.path.relpath(json_path, md_path.parent)
    except ValueError:  # different drives on Windows
        json_ref = str(json_path)

    start, end = _markers(name)
    body = [start, f"## {title}", "",
            f"Command: `{command}`  ", f"Run: {machine.get('date', '?')} on {machine_line(machine)}.", "",
            table_md.strip(), ""]
    if notes.strip():
        body += [notes.strip(), ""]
    body += [f"Raw results: `{Path(json_ref).as_posix()}`.", end]
    section = "\n".join(body)

    payload = {"name": name, "title": title, "command": command, "machine": machine,
               "table": table if not isinstance(table, str) else None, "results": results or {}}
    with _locked(md_path):
        old = md_path.read_bytes().decode("utf-8") if md_path.is_file() else _MD_HEADER  # keep \r\n as is
        n_start, n_end = old.count(start), old.count(end)
        if n_start != n_end or n_start > 1:
            raise ValueError(f"{md_path}: section {name!r} has {n_start} start and {n_end} end markers; "
                             "fix the file by hand (expected one pair or none)")
        if n_start == 1:
            i, j = old.index(start), old.index(end)
            if j < i:
                raise ValueError(f"{md_path}: end marker of section {name!r} comes before its start")
            new = old[:i] + section + old[j + len(end):]
        else:
            sep = "" if old.endswith("\n\n") else ("\n" if old.endswith("\n") else "\n\n")
            new = old + sep + section + "\n"
        _atomic_write(json_path, json.dumps(_clean(payload), indent=2, default=_json_default) + "\n")
        _atomic_write(md_path, new)
    return json_path


def publish(args: argparse.Namespace, name: str, *, title: str, command: str, rows: Sequence[dict[str, Any]],
            notes: str, results: dict[str, Any]) -> dict[str, Any]:
    """The usual end of a benchmark: its section written (unless ``--no-write``), rows and notes printed.

    ``args`` carries the :func:`add_output_args` options. Returns ``results``.
    """
    if not args.no_write:
        md = args.out if args.out is not None else default_md_path()
        write_section(md, name, title=title, command=command, table=rows, notes=notes, json_path=args.json_path,
                      machine=machine_info(), results=results)
    for row in rows:
        print(row)
    print(notes)
    return results


def parse_with_threads(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser`` given ``--threads N`` (torch's choice when absent), ``argv`` parsed, torch's threads set."""
    import torch

    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
