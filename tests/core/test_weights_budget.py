"""All shipped weights together stay within the 30 MB starter budget, as safetensors only."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = [ROOT / "radfm", ROOT / "adapters", ROOT / "tasks", ROOT / "eval"]
BUDGET = 30 * 1024 * 1024


def _files(pattern: str) -> list[Path]:
    return [p for d in PACKAGE_DIRS for p in d.rglob(pattern) if "__pycache__" not in p.parts]


def test_shipped_weights_fit_the_starter_budget() -> None:
    weights = _files("*.safetensors")
    total = sum(p.stat().st_size for p in weights)
    assert weights, "no shipped weights found"
    assert total <= BUDGET, f"{total / 2**20:.1f} MiB of safetensors ship with radfm (budget 30 MB)"


def test_no_pickled_weights_ship() -> None:
    pickles = [p for ext in ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt") for p in _files(ext)]
    assert not pickles, f"pickled files in the package: {pickles}"


def test_every_shipped_model_has_a_model_card() -> None:
    sub = {"adapter", "llm", "encoder_lora"}  # parts of a model folder, described by its card
    folders = {p.parent.parent if p.parent.name in sub else p.parent for p in _files("*.safetensors")}
    missing = [str(f.relative_to(ROOT)) for f in folders if not (f / "MODEL_CARD.md").is_file()]
    assert not missing, f"model folders without MODEL_CARD.md: {missing}"
