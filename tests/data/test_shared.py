"""The one lookup of the shared data folder: explicit path, then $RADFM_SHARED_DATA, then ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from radfm.data.shared import SHARED_DATA_ENV, shared_data_root


def test_explicit_path_then_environment_win_even_when_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path / "from_env"))
    assert shared_data_root(tmp_path / "given") == tmp_path / "given"  # returned as given: errors can name it
    assert shared_data_root() == tmp_path / "from_env"
    assert shared_data_root("~/x") == Path("~/x").expanduser()


def test_default_is_shared_data_beside_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert shared_data_root() == tmp_path / "shared" / "data"


def test_training_sources_and_conftest_use_it() -> None:
    """No second lookup survives where this one is meant (the segmentation train script imports it here)."""
    from radfm.training import sources

    assert sources.shared_data_root is shared_data_root
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    assert "shared_data_root" in conftest.read_text()


@pytest.mark.parametrize("module", ["io_bench", "fewshot", "registration", "report"])
def test_benchmarks_resolve_the_root_through_it(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"radfm.eval.benchmarks.{module}")
    assert mod.shared_data_root is shared_data_root
