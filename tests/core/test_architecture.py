"""The layout and dependency direction of DESIGN.md, checked so they cannot drift."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAPPING = {"radfm.adapters": "adapters", "radfm.tasks": "tasks", "radfm.eval": "eval", "radfm": "radfm"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_dirs() -> set[str]:
    """Dotted names of every folder with an __init__.py under the four top-level roots."""
    names = set()
    for dotted, folder in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            names.add(".".join([dotted, *rel.parts]) if rel.parts else dotted)
    return names


def test_every_package_is_listed_for_wheel_builds():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = _package_dirs() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_core_contract_covers_every_core_module():
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]
    sources = set(contracts[1]["source_modules"])
    core = set()
    for path in (REPO / "radfm").iterdir():
        if path.name.startswith(("__", ".")):
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            core.add(f"radfm.{path.stem}")
    missing = core - sources
    assert not missing, f"list these core modules in the import-linter contract: {sorted(missing)}"


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.slow
def test_wheel_contains_and_imports_namespaced_packages(tmp_path):
    """A wheel (not only the editable install) must ship radfm.eval/adapters/tasks."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("radfm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("radfm/eval/__init__.py", "radfm/adapters/__init__.py", "radfm/tasks/__init__.py",
                     "radfm/io/volume.py"):
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import radfm.eval, radfm.adapters, radfm.tasks, radfm.io; print(radfm.eval.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(site) in out.stdout
