"""The vision-language bridge and the composite report model (tiny configs, random weights)."""

from __future__ import annotations

import pytest
import torch

from radfm.errors import InputError
from radfm.models import (
    RadFMBridgeConfig,
    RadFMConfig,
    RadFMEncoder,
    RadFMEncoderConfig,
    RadFMForReportGeneration,
    VolumeResampler,
)

VOL_ID = 5
Q = 4


def _text_config(kind: str = "llama"):
    from transformers import LlamaConfig, Qwen2Config  # after radfm (its torchvision shim)

    common = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    if kind == "qwen2":  # ties lm_head to the embeddings, as small released Qwen2 models do
        return Qwen2Config(**common, tie_word_embeddings=True)
    return LlamaConfig(**common, tie_word_embeddings=False)


def tiny_vlm(kind: str = "llama", seed: int = 0) -> RadFMForReportGeneration:
    torch.manual_seed(seed)
    cfg = RadFMConfig(
        vision_config=RadFMEncoderConfig.from_preset("tiny", num_layers=2),
        bridge_config=RadFMBridgeConfig(num_queries=Q, hidden_size=32, num_layers=2, num_heads=2),
        text_config=_text_config(kind),
        volume_token_id=VOL_ID,
    )
    return RadFMForReportGeneration(cfg).eval()


def _prompt(n_volumes: int = 1) -> torch.Tensor:
    return torch.tensor([[1, 7, *([VOL_ID] * (Q * n_volumes)), 8, 9, 10]])


@pytest.mark.parametrize("grid", [(1, 2, 2), (2, 3, 4), (4, 4, 4)])
def test_resampler_gives_a_fixed_number_of_llm_embeddings_for_any_token_count(grid) -> None:
    cfg = RadFMBridgeConfig(num_queries=6, hidden_size=24, num_layers=2, num_heads=3, vision_hidden_size=16,
                            llm_hidden_size=40)
    bridge = VolumeResampler(cfg).eval()
    n = grid[0] * grid[1] * grid[2]
    out = bridge(torch.randn(2, n, 16), grid_size=grid)
    assert out.shape == (2, 6, 40)
    # With a prefix (class) token, and without positions, the shape is the same.
    assert bridge(torch.randn(2, n + 1, 16), grid_size=grid).shape == (2, 6, 40)
    assert bridge(torch.randn(2, n, 16)).shape == (2, 6, 40)


def test_resampler_mask_makes_padding_irrelevant() -> None:
    cfg = RadFMBridgeConfig(num_queries=3, hidden_size=24, num_layers=2, num_heads=2, vision_hidden_size=16,
                            llm_hidden_size=32, use_positions=False)
    bridge = VolumeResampler(cfg).eval()
    x = torch.randn(1, 5, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16) * 100], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(bridge(x), bridge(padded, attention_mask=mask), atol=1e-5, rtol=1e-5)


def test_positions_change_the_output() -> None:
    cfg = RadFMBridgeConfig(num_queries=3, hidden_size=24, num_layers=1, num_heads=2, vision_hidden_size=16,
                            llm_hidden_size=32)
    bridge = VolumeResampler(cfg).eval()
    x = torch.randn(1, 8, 16)
    assert not torch.allclose(bridge(x, grid_size=(2, 2, 2)), bridge(x, grid_size=(1, 1, 8)))


def test_composite_config_fills_the_bridge_widths_and_round_trips(tmp_path) -> None:
    m = tiny_vlm()
    assert m.config.bridge_config.vision_hidden_size == 64 and m.config.bridge_config.llm_hidden_size == 64
    m.config.save_pretrained(tmp_path)
    back = RadFMConfig.from_pretrained(tmp_path)
    assert type(back.text_config).__name__ == "LlamaConfig"
    assert back.num_volume_tokens == Q and back.volume_token_id == VOL_ID


def test_get_volume_features_shape() -> None:
    m = tiny_vlm()
    for size in (8, 16):
        assert m.get_volume_features(torch.randn(2, 1, size, size, 12)).shape == (2, Q, 64)


def test_placeholder_count_mismatch_is_a_clear_error() -> None:
    m = tiny_vlm()
    feats = torch.randn(1, Q, 64)
    with pytest.raises(InputError, match=r"3 volume placeholder token\(s\) but 4 volume feature"):
        m.build_inputs_embeds(torch.tensor([[1, VOL_ID, VOL_ID, VOL_ID, 8]]), feats)
    with pytest.raises(InputError, match="no volume was given"):
        m.build_inputs_embeds(_prompt(), None)
    embeds = m.build_inputs_embeds(_prompt(), feats)
    torch.testing.assert_close(embeds[0, 2:2 + Q], feats[0])  # scattered over the placeholders, in order


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_save_load_round_trip_gives_identical_logits_and_generation(tmp_path, kind) -> None:
    m = tiny_vlm(kind)
    x = torch.randn(1, 1, 8, 8, 8)
    ids = _prompt()
    with torch.no_grad():
        logits = m(ids, pixel_values=x).logits
    gen = m.generate(ids, pixel_values=x, max_new_tokens=6, min_new_tokens=6)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    back = RadFMForReportGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(ids, pixel_values=x).logits, logits)
    assert torch.equal(back.generate(ids, pixel_values=x, max_new_tokens=6, min_new_tokens=6), gen)
    if kind == "qwen2":
        lm = back.language_model
        assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()


def test_from_parts_loads_the_llm_with_from_pretrained(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_config(_text_config("qwen2"))
    lm.save_pretrained(tmp_path / "llm")
    enc = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", num_layers=2))
    enc.save_pretrained(tmp_path / "enc")
    m = RadFMForReportGeneration.from_parts(tmp_path / "llm", encoder=tmp_path / "enc",
                                            bridge_config={"num_queries": Q, "hidden_size": 32}, volume_token_id=VOL_ID)
    torch.testing.assert_close(m.language_model.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    torch.testing.assert_close(m.encoder.patch_embed.proj.weight, enc.patch_embed.proj.weight)
    ids = torch.tensor([[1, 7, 8]])
    with torch.no_grad():  # text-only prompts are the plain LLM
        torch.testing.assert_close(m(ids).logits, lm(ids).logits)


def test_loss_is_only_on_report_tokens() -> None:
    from radfm.tasks.report.train import lm_loss

    m = tiny_vlm()
    x = torch.randn(1, 1, 8, 8, 8)
    ids = _prompt()
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]  # the "report" is the last three tokens
    with torch.no_grad():
        out = m(ids, pixel_values=x, labels=labels)
        torch.testing.assert_close(out.loss, lm_loss(out.logits, labels))
        # Labels that (wrongly) name tokens at the volume placeholders are ignored by the model.
        noisy = labels.clone()
        noisy[0, 2:2 + Q] = 3
        assert torch.equal(m(ids, pixel_values=x, labels=noisy).loss, out.loss)
    # Gradients reach the bridge and the encoder through the scattered features.
    m.train()
    m(ids, pixel_values=x, labels=labels).loss.backward()
    assert m.bridge.queries.grad is not None and m.encoder.patch_embed.proj.weight.grad is not None


def test_from_pretrained_refuses_a_checkpoint_without_encoder_weights(tmp_path) -> None:
    """transformers would leave the encoder random (a MISSING table only); radfm must refuse loudly."""
    from safetensors.torch import load_file, save_file

    from radfm.errors import ConfigError

    tiny_vlm().save_pretrained(tmp_path)
    loaded = RadFMForReportGeneration.from_pretrained(tmp_path)  # the whole model loads fine
    assert isinstance(loaded, RadFMForReportGeneration)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(k for k in state if k.startswith("encoder."))
    assert dropped
    save_file({k: v for k, v in state.items() if not k.startswith("encoder.")}, str(weights),
              metadata={"format": "pt"})
    with pytest.raises(ConfigError) as err:
        RadFMForReportGeneration.from_pretrained(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "encoder" in msg and dropped[0] in msg
    assert "load_report_model" in err.value.hint
