"""Fixtures of the segmentation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from segtest_utils import tiny_model

from radfm.tasks.segmentation.model import RadFMPromptSegmenter


@pytest.fixture()
def model() -> RadFMPromptSegmenter:
    return tiny_model()


@pytest.fixture()
def tmp_model_dir(tmp_path: Path, model: RadFMPromptSegmenter) -> Path:
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"
