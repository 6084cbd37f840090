"""The registration demo section with the shipped model: pictures, Dice before/after, folding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from radfm.demo import run_demo
from radfm.tasks.registration.api import default_model_dir


def test_demo_section_registers_the_phantom_pair(tmp_path) -> None:
    if not (default_model_dir() / "model.safetensors").is_file():
        pytest.fail("the shipped registration model is missing from radfm/tasks/registration/weights")
    index = run_demo(tmp_path / "demo", seed=2, shape=(48, 48, 48), sections=["registration"])
    html = index.read_text()
    assert "Deformable registration" in html and "simulated" in html
    assert "failed" not in html.split("Deformable registration")[1][:200]
    for name in ("registration_before.png", "registration_after.png", "registration_jacobian.png"):
        px = np.asarray(Image.open(tmp_path / "demo" / name).convert("RGB")).astype(int)
        assert px.std() > 10, name
    assert "Folding" in html and "Mean Dice" in html
