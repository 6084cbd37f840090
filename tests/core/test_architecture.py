"""The layout and dependency direction of DESIGN.md, checked so they cannot drift.

Why our own import walker instead of import-linter: the fixed layout installs ``adapters/``,
``tasks/`` and ``eval/`` under the ``radfm`` namespace through a setuptools package-dir
mapping, which import-linter's module discovery (a walk of ``radfm.__path__``) cannot see.
Reading every import statement (module level *and* inside functions) with ``ast`` checks the
same rules on the source tree itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"radfm": "radfm", "radfm.adapters": "adapters", "radfm.tasks": "tasks", "radfm.eval": "eval"}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the four roots."""
    out = {}
    for dotted, folder in ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([dotted, *parts])] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every radfm module imported anywhere in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m == "radfm" or m.startswith("radfm.")}


def _layer(module: str) -> str:
    for prefix in ("radfm.adapters", "radfm.eval"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module.startswith("radfm.tasks."):
        return ".".join(module.split(".")[:3])  # each task is its own island
    if module == "radfm.tasks":
        return "radfm.tasks"
    return "core"


def _allowed(src: str, dst: str) -> bool:
    a, b = _layer(src), _layer(dst)
    if a == b or b == "core":
        return True
    if a == "core":
        return False  # the core reaches the rest only through radfm.registry (entry points)
    if a == "radfm.adapters":
        return False
    if a.startswith("radfm.tasks"):
        return b == "radfm.adapters" or b == "radfm.tasks"  # no task imports another task
    return a == "radfm.eval"  # eval sits on top


def test_dependency_direction():
    violations = []
    for name, path in _modules().items():
        for dst in _imports(name, path):
            if not _allowed(name, dst):
                violations.append(f"{path.relative_to(REPO)}: {name} imports {dst}")
    assert not violations, "dependency direction of DESIGN.md broken:\n" + "\n".join(sorted(violations))


def test_checker_catches_a_forbidden_import(tmp_path):
    """The walker itself must see function-level and relative imports."""
    assert not _allowed("radfm.cli", "radfm.eval.metrics")
    assert not _allowed("radfm.tasks.segmentation.model", "radfm.tasks.registration.model")
    assert not _allowed("radfm.adapters.lora", "radfm.tasks.segmentation")
    assert _allowed("radfm.tasks.segmentation.train", "radfm.adapters.lora")
    assert _allowed("radfm.eval.benchmarks.io_bench", "radfm.io")
    code = "def f():\n    from ..eval import metrics\n"
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    assert "radfm.eval.metrics" in _imports("radfm.io.probe", probe)


def test_every_package_is_listed_for_wheel_builds():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {n for n, p in _modules().items() if p.name == "__init__.py"}
    missing = packages - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


@pytest.mark.slow
def test_wheel_ships_the_namespaced_packages(tmp_path):
    """A wheel (not only the editable install) must carry radfm.eval/adapters/tasks."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("radfm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"radfm/{p.relative_to(REPO / ROOTS[root]).as_posix()}" if root == "radfm" else
                f"{root.replace('.', '/')}/{p.relative_to(REPO / ROOTS[root]).as_posix()}"
                for root in ROOTS for p in (REPO / ROOTS[root]).rglob("*.py")}
    missing = expected - names
    assert not missing, f"wheel lacks {sorted(missing)[:10]}"
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "radfm = radfm.cli:main" in text and "[radfm.bench]" in text
