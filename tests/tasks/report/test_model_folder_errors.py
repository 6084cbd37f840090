"""A report model folder without model.safetensors, or with only a pickle, is one clear line (issue 15)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from radfm.cli import main
from radfm.errors import ConfigError
from radfm.tasks.report.model import default_model_dir, load_report_model


class _Evil:
    def __reduce__(self):  # a pickle that would run code when loaded
        return (print, ("PWNED",))


@pytest.fixture
def broken(tmp_path: Path) -> dict[str, Path]:
    none = tmp_path / "no-weights"
    shutil.copytree(default_model_dir(), none)
    (none / "model.safetensors").unlink()
    pickle = tmp_path / "pickle-only"
    shutil.copytree(none, pickle)
    torch.save({"w": _Evil()}, pickle / "pytorch_model.bin")
    return {"none": none, "pickle": pickle}


def test_loader_names_the_missing_weights_and_the_pickle(broken: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"'no-weights' has no model\.safetensors"):
        load_report_model(broken["none"])
    with pytest.raises(ConfigError, match=r"only pickle weights \(pytorch_model.bin\)") as err:
        load_report_model(broken["pickle"])
    assert getattr(err.value, "http_status", None) == 503


@pytest.mark.parametrize("which,words", [("none", "has no model.safetensors"), ("pickle", "only pickle weights")])
def test_cli_prints_one_line(broken: dict[str, Path], which: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--model", str(broken[which]), "--findings", "Cardiomegaly"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("radfm: error:") and "\n" not in err and words in err, err
    assert "Traceback" not in err and "PWNED" not in captured.out + err


def test_backend_refuses_a_pickle_llm_folder(broken: dict[str, Path], tmp_path: Path) -> None:
    from radfm.serve.backends import TransformersBackend

    llm = tmp_path / "llm"
    llm.mkdir()
    shutil.copy(default_model_dir() / "llm" / "config.json", llm)
    torch.save({"w": _Evil()}, llm / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only pickle weights"):
        TransformersBackend(llm)
