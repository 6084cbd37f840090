"""``radfm train registration -c RECIPE``: a tiny recipe runs end to end and leaves a loadable model
and a loss curve; the shipped recipes parse and reproduce the shipped model's training record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from radfm.cli import main
from radfm.config import load_config, to_dict
from radfm.errors import ConfigError
from radfm.tasks.registration.model import RadFMRegistration
from radfm.tasks.registration.recipe import RegRecipe

REPO = Path(__file__).resolve().parents[3]

TINY = """\
output_dir: {out}
phantoms: 1
phantom_shape: [32, 32, 32]
real: []
checkpoint_every: 2
threads: 1
train:
  steps: 3
  warmup: 1
  crop_vox: [32]
  bf16: false
  progress: true
"""


def test_train_registration_runs_a_tiny_recipe_and_writes_model_and_curve(tmp_path, capsys) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.format(out=tmp_path / "run"))
    assert main(["train", "registration", "-c", str(recipe), "train.seed=3"]) == 0
    model_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert model_dir == tmp_path / "run" / "model"
    for name in ("config.json", "model.safetensors", "preprocess_plan.json", "training.json"):
        assert (model_dir / name).is_file(), name
    curve = tmp_path / "run" / "loss_curve.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((model_dir / "training.json").read_text())
    assert record["steps"] == 3 and record["train_config"]["seed"] == 3  # the override reached the loop
    assert record["subjects"] == ["phantom CT chest_abdomen seed 3000"]  # seed 3 * 1000: even, CT
    assert load_config(RegRecipe, tmp_path / "run" / "registration_recipe.yaml").train.steps == 3
    model = RadFMRegistration.from_pretrained(model_dir).eval()
    fresh = RadFMRegistration(model.config).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():  # trained: the flow convs left their zero start, so the field is not the identity
        assert not torch.equal(model(x, x.roll(2, dims=2)).ddf, fresh(x, x.roll(2, dims=2)).ddf)


def test_train_registration_on_the_shared_encoder_saves_the_adapter_apart(tmp_path, capsys) -> None:
    """``encoder: shared`` trains LoRA on the shared CNN (recipe -> accelerate loop) and leaves the
    adapter folder beside a decoder-only checkpoint that loads back."""
    pytest.importorskip("peft")
    recipe = tmp_path / "shared.yaml"
    recipe.write_text("encoder: shared\n" + TINY.format(out=tmp_path / "run"))
    assert main(["train", "registration", "-c", str(recipe)]) == 0
    model_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (model_dir / "encoder_adapter" / "radfm_adapter.json").is_file()
    assert json.loads((model_dir / "training.json").read_text())["train_config"]["encoder_mode"] == "lora"
    model = RadFMRegistration.from_pretrained(model_dir)
    assert model.config.encoder_source == "shared"
    shipped_recipe = load_config(RegRecipe, REPO / "configs/registration/shared-cnn.yaml")
    assert shipped_recipe.encoder == "shared" and shipped_recipe.train.encoder_mode == "lora"
    assert all(c % 16 == 0 for c in shipped_recipe.train.crop_vox)


def test_train_help_lists_every_task(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for task in ("pretrain", "registration", "report", "segmentation"):
        assert task in text, task


def test_shipped_recipe_reproduces_the_shipped_training_record() -> None:
    recipe = load_config(RegRecipe, REPO / "configs/registration/starter.yaml")
    shipped = json.loads((REPO / "tasks/registration/weights/training.json").read_text())
    ours = to_dict(recipe.train)
    assert {k: ours[k] for k in shipped["train_config"]} == shipped["train_config"]
    assert recipe.phantoms == sum(s.startswith("phantom") for s in shipped["subjects"])
    assert [Path(r).name for r in recipe.real] == [s for s in shipped["subjects"] if not s.startswith("phantom")]
    stage1 = load_config(RegRecipe, REPO / "configs/registration/starter-stage1.yaml")
    assert stage1.stop_after == 500 and Path(recipe.init or "") == Path(stage1.output_dir) / "model"


def test_unknown_recipe_keys_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"train\.stpes"):
        load_config(RegRecipe, None, ["train.stpes=3"])
