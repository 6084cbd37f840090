"""Benchmark reporting: sections replace only themselves, tables format predictably, io bench runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from radfm.eval.benchreport import (
    default_md_path,
    format_value,
    machine_info,
    markdown_table,
    timed,
    write_section,
)

MACHINE = {"date": "2026-01-01T00:00:00+00:00", "cpu": "Test CPU", "cores_logical": 2, "cores_usable": 2,
           "ram_gib": 8.0, "python": "3.11", "torch": "2.x", "torch_threads": 2}

BEFORE = "# Benchmarks\n\nIntro with ünïcode and trailing spaces   \n\n"
SECTION_A = "<!-- bench:a:start -->\nold a table\n<!-- bench:a:end -->"
MIDDLE = "\n\nhand-written text between sections\r\n\n"
SECTION_B = "<!-- bench:b:start -->\nB stays\n<!-- bench:b:end -->"
AFTER = "\n\ntail without final newline"


def test_write_section_replaces_only_its_own(tmp_path: Path) -> None:
    md = tmp_path / "docs" / "benchmarks.md"
    md.parent.mkdir()
    md.write_bytes((BEFORE + SECTION_A + MIDDLE + SECTION_B + AFTER).encode())

    jp = write_section(md, "a", title="Section A", command="radfm bench a --x 1",
                       table=[{"case": "x", "s": 0.5}], notes="a note", machine=MACHINE,
                       results={"k": [1, 2]})
    text = md.read_bytes().decode()
    assert text.startswith(BEFORE + "<!-- bench:a:start -->")
    assert text.endswith("<!-- bench:a:end -->" + MIDDLE + SECTION_B + AFTER)
    assert "old a table" not in text
    assert "`radfm bench a --x 1`" in text and "Test CPU" in text and "2026-01-01" in text
    assert "| case | s |" in text and "a note" in text
    assert jp == md.parent / "bench" / "a.json"
    payload = json.loads(jp.read_text())
    assert payload["command"] == "radfm bench a --x 1" and payload["results"] == {"k": [1, 2]}
    assert payload["table"] == [{"case": "x", "s": 0.5}]

    # rerunning replaces, never duplicates
    write_section(md, "a", title="Section A", command="c2", table="| t |\n|---|\n| 1 |", machine=MACHINE)
    text2 = md.read_bytes().decode()
    assert text2.count("<!-- bench:a:start -->") == 1 and "`c2`" in text2
    assert "`radfm bench a --x 1`" not in text2
    assert text2.endswith("<!-- bench:a:end -->" + MIDDLE + SECTION_B + AFTER)

    # a new section is appended; the existing bytes stay a prefix
    write_section(md, "c", title="C", command="c", table=[], machine=MACHINE)
    text3 = md.read_bytes().decode()
    assert text3.startswith(text2) and text3.rstrip().endswith("<!-- bench:c:end -->")


def test_write_section_creates_file_and_refuses_broken_markers(tmp_path: Path) -> None:
    md = tmp_path / "new" / "b.md"
    write_section(md, "io", title="T", command="c", table=[{"x": 1}], machine=MACHINE,
                  json_path=tmp_path / "raw.json")
    assert md.read_text().count("<!-- bench:io:end -->") == 1 and (tmp_path / "raw.json").is_file()
    broken = tmp_path / "broken.md"
    broken.write_text("x\n<!-- bench:io:start -->\nno end\n")
    with pytest.raises(ValueError, match="markers"):
        write_section(broken, "io", title="T", command="c", table=[], machine=MACHINE)
    assert broken.read_text() == "x\n<!-- bench:io:start -->\nno end\n"
    with pytest.raises(ValueError, match="section name"):
        write_section(broken, "bad name", title="T", command="c", table=[], machine=MACHINE)


def test_markdown_table_formatting() -> None:
    rows = [{"name": "a|b", "s": 0.001234, "n": 3, "MB/s": 1234.5},
            {"name": "c", "s": float("nan"), "n": 10, "shape": (2, 3), "MB/s": None}]
    assert markdown_table(rows, precision=3) == (
        "| name | s | n | MB/s | shape |\n"
        "|---|---:|---:|---:|---|\n"
        "| a\\|b | 0.00123 | 3 | 1234 |  |\n"
        "| c | nan | 10 |  | 2×3 |"
    )
    assert markdown_table([]) == ""


@pytest.mark.parametrize(("value", "expected"), [
    (0.97123, "0.971"), (1.0, "1.00"), (850.4, "850"), (0, "0"), (0.0, "0"), (12.345, "12.3"),
    (2.5e-6, "2.50e-06"), (float("inf"), "inf"), (True, "True"), (None, ""), ("x", "x"),
])
def test_format_value(value: object, expected: str) -> None:
    assert format_value(value, 3) == expected


def test_timed_counts_calls() -> None:
    calls = []
    t = timed(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and len(t.times_s) == 3 and t.result == 5
    assert t.min_s <= t.median_s and t.to_dict()["repeats"] == 3
    with pytest.raises(ValueError):
        timed(lambda: None, repeats=0)


def test_default_md_path_finds_checkout(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "radfm"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert default_md_path(sub) == tmp_path.resolve() / "docs" / "benchmarks.md"


def test_machine_info_is_json() -> None:
    info = machine_info()
    assert {"cpu", "cores_usable", "torch", "torch_threads", "ram_gib", "date"} <= set(info)
    json.dumps(info)


def test_io_bench_missing_data_exits(tmp_path: Path) -> None:
    from radfm.eval.benchmarks.io_bench import run

    with pytest.raises(SystemExit) as exc:
        run(["--data", str(tmp_path / "nowhere"), "--no-write"])
    assert exc.value.code == 2


@pytest.mark.shared_data
def test_io_bench_runs_on_real_nifti(shared_data: Path, tmp_path: Path) -> None:
    from radfm.eval.benchmarks.io_bench import run

    md = tmp_path / "benchmarks.md"
    out = run(["--data", str(shared_data), "--cases", "nifti", "--repeats", "1", "--warmup", "0",
               "--no-save-like", "--out", str(md)])
    assert out["rows"] and all(r["file"] == "nifti" for r in out["rows"])
    assert all(r["plain s"] > 0 and math.isfinite(r["plain MB/s"]) for r in out["rows"])
    assert "<!-- bench:io:start -->" in md.read_text()
    assert json.loads((tmp_path / "bench" / "io.json").read_text())["name"] == "io"
