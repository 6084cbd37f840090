"""RadFMRegistration: config checks, shapes, diffeomorphic mode, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
from regtest_utils import tiny_config

from radfm.errors import ConfigError, InputError
from radfm.tasks.registration import functional as RF
from radfm.tasks.registration.model import RadFMRegConfig, RadFMRegistration


def _perturb(model: RadFMRegistration, seed: int = 0) -> RadFMRegistration:
    """Give the zero-initialised flow convs small random weights so outputs are not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for dec in model.decoders:
            dec.flow.weight.copy_(torch.randn(dec.flow.weight.shape, generator=g) * 1e-3)
    return model


def test_untrained_model_predicts_identity_and_shapes(tiny_model) -> None:
    x, y = torch.randn(1, 1, 32, 48, 32), torch.randn(1, 1, 32, 48, 32)
    with torch.no_grad():
        out = tiny_model(x, y, modality_ids=torch.tensor([1]))
    assert out.ddf.shape == (1, 3, 32, 48, 32) and out.ddf.dtype == torch.float32
    assert torch.count_nonzero(out.ddf) == 0
    assert len(out.level_fields) == len(tiny_model.config.strides) == 3
    assert out.level_fields[0].shape[2:] == (8, 12, 8)  # stride 4


def test_diffeomorphic_model_returns_velocity_and_no_folding() -> None:
    model = _perturb(RadFMRegistration(tiny_config(diffeomorphic=True)).eval(), seed=1)
    x, y = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x, y)
    assert out.svf is not None and out.ddf.abs().max() > 0
    assert torch.allclose(out.ddf, RF.integrate_velocity(out.svf, model.config.int_steps), atol=1e-5)
    assert float(RF.jacobian_determinant(out.ddf).min()) > 0


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="power-of-2"):
        tiny_config(encoder_config={"patch_size": (6, 6, 6), "hidden_size": 32, "num_heads": 2, "num_layers": 2})
    with pytest.raises(ConfigError, match="decoder_channels"):
        tiny_config(decoder_channels=(8, 8, 8, 8))
    with pytest.raises(ConfigError, match="similarity"):
        tiny_config(similarity="mse")
    model = RadFMRegistration(tiny_config())
    with pytest.raises(InputError, match="multiple of 8"):
        model(torch.zeros(1, 1, 20, 32, 32), torch.zeros(1, 1, 20, 32, 32))


def test_save_load_round_trip_gives_identical_fields(tmp_path) -> None:
    model = _perturb(RadFMRegistration(tiny_config()).eval(), seed=2)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "preprocess_plan.json"} <= files
    plan = json.loads((tmp_path / "preprocess_plan.json").read_text())
    assert plan["target_spacing"] == [2.0, 2.0, 2.0] and plan["pad_multiple"] == [8, 8, 8]
    loaded = RadFMRegistration.from_pretrained(tmp_path).eval()
    x, y = torch.randn(1, 1, 32, 32, 48), torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        a, b = model(x, y), loaded(x, y)
    assert a.ddf.abs().max() > 0
    assert torch.equal(a.ddf, b.ddf)
    assert isinstance(loaded.config, RadFMRegConfig) and loaded.config.decoder_channels == [16, 12, 8]
    (tmp_path / "preprocess_plan.json").unlink()
    with pytest.raises(ConfigError, match=r"preprocess_plan\.json"):
        RadFMRegistration.from_pretrained(tmp_path)


def test_starter_encoder_model_stores_only_what_it_trains(tmp_path) -> None:
    """On the starter encoder the frozen trunk stays out of the checkpoint and is re-attached on load."""
    pytest.importorskip("radfm.starter")
    from radfm.starter import starter_encoder_path

    try:
        starter_encoder_path()
    except FileNotFoundError:
        pytest.skip("this installation has no starter encoder")
    from safetensors import safe_open

    model = _perturb(RadFMRegistration.from_starter_encoder().eval(), seed=3)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("encoder.pyramid.") for k in keys)
    assert not any(k.startswith("encoder.blocks.") or k.startswith("encoder.patch_embed.") for k in keys)
    assert (tmp_path / "model.safetensors").stat().st_size < 4 * 2**20
    loaded = RadFMRegistration.from_pretrained(tmp_path).eval()
    x, y = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, y).ddf, loaded(x, y).ddf)
