"""Every runtime dependency declared in pyproject.toml is imported somewhere in the four roots.

Why: an unused dependency still costs every install (open_clip_torch dragged in torchvision and
timm, and through them a CUDA torch) and misleads a reader about what the code needs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("radfm", "adapters", "tasks", "eval")
#: distribution name -> import name, where they differ
IMPORT_NAME = {"pyyaml": "yaml", "scikit-image": "skimage", "segment-anything": "segment_anything",
               "rouge-score": "rouge_score", "simpleitk": "SimpleITK",
               "dicom-anonymizer": "dicomanonymizer"}


def _imported_top_levels() -> set[str]:
    found: set[str] = set()
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found


def test_every_declared_dependency_is_imported() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].strip().lower() for d in deps]
    imported = _imported_top_levels()
    unused = [n for n in names if IMPORT_NAME.get(n, n.replace("-", "_")) not in imported]
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
