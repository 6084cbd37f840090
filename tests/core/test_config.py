from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from radfm.config import load_config, to_dict
from radfm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Recipe:
    name: str = "x"
    patch: tuple[int, int, int] = (32, 32, 32)
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    seed: int | None = None


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: pre\npatch: [16, 32, 32]\noptim:\n  lr: 1e-4\n")
    cfg = load_config(Recipe, p, ["optim.steps=5", "seed=3"])
    assert cfg.patch == (16, 32, 32)
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.steps == 5 and cfg.seed == 3
    assert to_dict(cfg)["patch"] == [16, 32, 32]


def test_unknown_key_names_valid_ones(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr_: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr_.*Valid keys here: lr, steps"):
        load_config(Recipe, p)


def test_type_errors_and_no_code_execution(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.steps"):
        load_config(Recipe, None, ["optim.steps=many"])
    with pytest.raises(ConfigError, match=r"needs 3 values"):
        load_config(Recipe, None, ["patch=[1,2]"])
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Recipe, p)
