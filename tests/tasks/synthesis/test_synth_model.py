"""The synthesis model: identity at initialisation, save -> load round trip, the shared encoder kept out."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from radfm.errors import ConfigError, InputError
from radfm.tasks.synthesis.config import RadFMSynthConfig
from radfm.tasks.synthesis.model import RadFMSynthesis, hu_to_window, save_synthesis, window_to_hu


def _input(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return hu_to_window(torch.randn(1, 1, 16, 32, 32, generator=g) * 200.0)


def test_untrained_model_is_the_identity_in_hu() -> None:
    model = RadFMSynthesis(RadFMSynthConfig(decoder_channels=(4, 4, 4, 4), window=(16, 32, 32))).eval()
    x = _input()
    with torch.no_grad():
        assert torch.allclose(model(x), window_to_hu(x), atol=1e-3)


def test_tiny_config_round_trip_gives_identical_output(tmp_path, tiny) -> None:
    x = _input()
    with torch.no_grad():
        before = tiny(x)
    assert (before - window_to_hu(x)).abs().max() > 1.0  # the random head changes the image
    tiny.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "preprocess_plan.json"}
    loaded = RadFMSynthesis.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    plan = json.loads((tmp_path / "m" / "preprocess_plan.json").read_text())
    assert plan["target_spacing"] is None and plan["normalization"] == "ct_window" and plan["modality"] == "CT"


def test_shared_encoder_is_referenced_not_stored(tmp_path) -> None:
    model = RadFMSynthesis.from_shared_encoder(decoder_channels=(4, 4, 4, 4), window=(16, 32, 32))
    torch.nn.init.normal_(model.head.weight, std=0.05)
    x = _input()
    with torch.no_grad():
        before = model.eval()(x)
    save_synthesis(model, tmp_path / "m")
    keys = load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("encoder.") for k in keys)
    loaded = RadFMSynthesis.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["encoder_sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="another shared encoder"):
        RadFMSynthesis.from_pretrained(tmp_path / "m")


def test_lora_adapter_is_saved_apart_and_reloaded(tmp_path) -> None:
    from radfm.tasks.synthesis.train import TrainConfig, prepare_encoder

    model = RadFMSynthesis.from_shared_encoder(decoder_channels=(4, 4, 4, 4), window=(16, 32, 32))
    peft_model = prepare_encoder(model, TrainConfig(encoder_mode="lora", lora_r=2))
    for n, p in peft_model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in n or n.endswith("head.weight"):
            torch.nn.init.normal_(p, std=0.02)
    x = _input()
    with torch.no_grad():
        before = peft_model.eval()(x)
    save_synthesis(peft_model, tmp_path / "m")
    assert (tmp_path / "m" / "encoder_adapter" / "radfm_adapter.json").is_file()
    loaded = RadFMSynthesis.from_pretrained(tmp_path / "m")  # adapter merged
    with torch.no_grad():
        assert torch.allclose(loaded(x), before, atol=0.05)


def test_bad_inputs_and_configs_are_clear_errors(tiny) -> None:
    with pytest.raises(InputError, match="multiple of 16"):
        tiny(torch.zeros(1, 1, 16, 30, 32))
    with pytest.raises(ConfigError, match="window"):
        RadFMSynthConfig(window=(10, 32, 32))
    with pytest.raises(ConfigError, match="task"):
        RadFMSynthConfig(task="mr2ct")
