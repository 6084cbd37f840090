"""Tests of the shared 3D encoder (tiny preset; large presets only on the meta device)."""

from __future__ import annotations

import math

import pytest
import torch

from radfm.models import (
    ENCODER_PRESETS,
    RadFMEncoder,
    RadFMEncoderConfig,
    expand_input_channels,
    pad_to_patch_multiple,
    random_keep_indices,
)
from radfm.models.pos_embed import interpolate_pos_table, sincos_pos_embed_3d

# Total parameters (trunk + pyramid, 1 input channel) expected per preset, in millions.
EXPECTED_MILLIONS = {"tiny": (0.15, 0.4), "small": (20, 30), "base": (85, 100), "large": (300, 330),
                     "cnn-tiny": (0.2, 0.4), "cnn-small": (3.0, 4.5), "cnn-base": (28, 36)}


def tiny(**overrides) -> RadFMEncoder:
    torch.manual_seed(0)
    return RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", **overrides)).eval()


def test_every_preset_has_an_expected_range() -> None:
    assert set(EXPECTED_MILLIONS) == set(ENCODER_PRESETS)


@pytest.mark.parametrize("name", sorted(ENCODER_PRESETS))
def test_preset_parameter_count(name: str) -> None:
    config = RadFMEncoderConfig.from_preset(name)
    assert config.model_type == "radfm_encoder"
    assert config.hidden_size % config.num_heads == 0
    if config.architecture == "vit":
        assert len(config.out_indices) == 4 and config.out_indices[-1] == config.num_layers - 1
    if name in ("tiny", "small", "cnn-tiny", "cnn-small"):
        model = RadFMEncoder(config)
    else:  # meta device: shapes only, no memory, no init
        with torch.device("meta"):
            model = RadFMEncoder(config)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    lo, hi = EXPECTED_MILLIONS[name]
    assert lo <= millions <= hi, f"{name}: {millions:.2f} M parameters"


def test_from_preset_rejects_unknown_names_and_fields() -> None:
    with pytest.raises(ValueError, match="unknown encoder preset"):
        RadFMEncoderConfig.from_preset("huge")
    with pytest.raises(ValueError, match="hiden_size"):
        RadFMEncoderConfig.from_preset("tiny", hiden_size=32)
    with pytest.raises(ValueError, match="divisible"):
        RadFMEncoderConfig.from_preset("tiny", num_heads=5)


def test_forward_shapes_anisotropic_patch_non_cubic_input() -> None:
    model = tiny(patch_size=(4, 8, 8))
    x = torch.randn(2, 1, 16, 32, 48)
    out = model(x, modality_ids=torch.tensor([0, 1]))
    assert out.grid_size == (4, 4, 6)
    assert out.last_hidden_state.shape == (2, 4 * 4 * 6, 64)
    assert len(out.hidden_states) == 4 and all(h.shape == (2, 96, 64) for h in out.hidden_states)
    strides = model.config.pyramid_strides
    assert strides == [(1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16)]
    channels = model.config.pyramid_channels
    for level, (fmap, stride, ch) in enumerate(zip(out.feature_pyramid, strides, channels)):
        expected = tuple(math.ceil(s / st) for s, st in zip(x.shape[2:], stride))
        assert fmap.shape == (2, ch, *expected), level


def test_pyramid_keeps_axes_that_cannot_be_halved() -> None:
    model = tiny(patch_size=(2, 4, 4))
    assert model.config.pyramid_strides == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    out = model(torch.randn(1, 1, 4, 8, 8))
    assert [tuple(f.shape[2:]) for f in out.feature_pyramid] == [(4, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]


def test_varying_grid_sizes_with_one_model() -> None:
    model = tiny(patch_size=(8, 8, 8), learned_pos_embed=True, pos_embed_ref_grid=(4, 4, 4))
    with torch.no_grad():
        a = model(torch.randn(1, 1, 32, 32, 32))
        b = model(torch.randn(1, 1, 48, 32, 64))
    assert a.grid_size == (4, 4, 4) and a.last_hidden_state.shape == (1, 64, 64)
    assert b.grid_size == (6, 4, 8) and b.last_hidden_state.shape == (1, 192, 64)


def test_pos_embed_functions() -> None:
    pos = sincos_pos_embed_3d((2, 3, 4), 64)
    assert pos.shape == (24, 64)
    assert torch.all(pos[:, 60:] == 0)  # 64 = 3 x 20 + 4 zero channels
    assert torch.equal(pos[0, :10], torch.zeros(10))  # sin(0) for z = 0
    # Same offset -> same code, whatever the grid (crops of one scan agree).
    big = sincos_pos_embed_3d((4, 3, 4), 64).reshape(4, 3, 4, 64)
    assert torch.equal(big[:2].reshape(24, 64), pos)
    table = torch.randn(1, 8, 2, 2, 2)
    assert torch.equal(interpolate_pos_table(table, (2, 2, 2)), table.flatten(2).transpose(1, 2)[0])
    assert interpolate_pos_table(table, (3, 4, 5)).shape == (60, 8)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = tiny(patch_size=(4, 8, 8), use_cls_token=True, learned_pos_embed=True)
    with torch.no_grad():  # make the zero-initialised parts non-trivial so loading them is tested
        model.pos_table.normal_()
        model.modality_embed.weight.normal_()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    loaded = RadFMEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.patch_size == (4, 8, 8)
    x = torch.randn(1, 1, 16, 32, 32)
    ids = torch.tensor([1])
    with torch.no_grad():
        a, b = model(x, modality_ids=ids), loaded(x, modality_ids=ids)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    for fa, fb in zip(a.feature_pyramid, b.feature_pyramid):
        assert torch.equal(fa, fb)


def test_keep_indices_encodes_only_kept_tokens_and_passes_gradients() -> None:
    model = tiny().train()
    x = torch.randn(2, 1, 16, 16, 16)  # 4^3 = 64 tokens
    keep = random_keep_indices(2, 64, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (2, 16)
    out = model(x, keep_indices=keep, modality_ids=torch.tensor([0, 0]))
    assert out.last_hidden_state.shape == (2, 16, 64)
    assert out.feature_pyramid is None and out.grid_size == (4, 4, 4)
    out.last_hidden_state.square().mean().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keep_indices"):
        model(x, keep_indices=torch.full((2, 4), 64))


def test_output_pyramid_false_and_volume_features() -> None:
    model = tiny()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = model(x, output_pyramid=False)
        feats = model.get_volume_features(x)
    assert out.feature_pyramid is None
    assert torch.equal(feats, out.last_hidden_state) and feats.shape == (1, 64, 64)


def test_modality_embedding() -> None:
    model = tiny()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        plain = model(x, output_pyramid=False).last_hidden_state
        # Zero-initialised: a fresh model gives the same tokens with or without modality ids.
        assert torch.equal(
            model(x, modality_ids=torch.tensor([0, 1]), output_pyramid=False).last_hidden_state, plain
        )
        model.modality_embed.weight.normal_()
        out = model(x, modality_ids=torch.tensor([0, 1]), output_pyramid=False).last_hidden_state
    assert not torch.allclose(out, plain)
    with pytest.raises(ValueError, match="modality_ids"):
        model(x, modality_ids=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no modality embedding"):
        tiny(modality_embedding=False)(x, modality_ids=torch.tensor([0, 1]))


def test_lora_target_names() -> None:
    """The module names adapters rely on: qkv, attn.proj, fc1, fc2 and patch_embed.proj."""
    peft = pytest.importorskip("peft")
    model = tiny()
    targets = ["qkv", "attn.proj", "fc1", "fc2", "patch_embed.proj"]
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    wrapped = {n.removesuffix(".lora_A") for n, _ in lora.named_modules() if n.endswith(".lora_A")}
    assert len(wrapped) == 4 * model.config.num_layers + 1
    assert not any("pyramid" in n for n in wrapped)
    out = lora(torch.randn(1, 1, 16, 16, 16))
    sum(f.mean() for f in out.feature_pyramid).backward()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_multi_channel_input() -> None:
    model = tiny(in_channels=3)
    out = model(torch.randn(1, 3, 16, 16, 16))
    assert out.last_hidden_state.shape == (1, 64, 64)
    with pytest.raises(ValueError, match="3 input channel"):
        model(torch.randn(1, 1, 16, 16, 16))


def test_expand_input_channels_keeps_outputs_for_copied_channels() -> None:
    model = tiny()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        w = model.patch_embed.proj.weight.clone()
        expand_input_channels(model, 2)
        assert model.config.in_channels == 2
        assert torch.equal(model.patch_embed.proj.weight, torch.cat([w / 2, w / 2], dim=1))
        out = model(torch.cat([x, x], dim=1)).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "match"),
    [((1, 1, 16, 16, 15), r"\(1, 1, 16, 16, 15\).*\(4, 4, 4\)"), ((1, 16, 16, 16), r"\(1, 16, 16, 16\)")],
)
def test_bad_input_shape_names_the_shape(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(*shape))


def test_pad_to_patch_multiple() -> None:
    x = torch.randn(1, 1, 15, 16, 17)
    y, pad = pad_to_patch_multiple(x, (4, 4, 4), value=-1.0)
    assert y.shape == (1, 1, 16, 16, 20) and pad == (1, 0, 3)
    assert torch.equal(y[..., :15, :16, :17], x) and torch.all(y[..., 15:, :, :] == -1)


def test_bf16_autocast_close_to_fp32() -> None:
    model = tiny()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for a, b in [
        (ref.last_hidden_state, low.last_hidden_state),
        *zip(ref.feature_pyramid, low.feature_pyramid),
    ]:
        rel = (a - b.float()).norm() / a.norm()
        assert rel < 5e-2, float(rel)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 1, 16, 16, 16)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny(drop_path_rate=0.2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.gradient_checkpointing
        torch.manual_seed(1)
        out = model(x)
        loss = out.last_hidden_state.square().mean() + sum(f.mean() for f in out.feature_pyramid)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- the CNN trunk
def test_cnn_encoder_features_at_every_stride_and_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny")).eval()
    cfg = model.config
    assert cfg.architecture == "cnn" and cfg.patch_size == (16, 16, 16) and cfg.hidden_size == 48
    assert cfg.pyramid_strides == [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)]
    x = torch.randn(2, 1, 32, 48, 16)
    with torch.no_grad():
        out = model(x, modality_ids=torch.tensor([0, 1]))
    assert [tuple(f.shape) for f in out.feature_maps] == [
        (2, 8, 32, 48, 16), (2, 16, 16, 24, 8), (2, 24, 8, 12, 4), (2, 32, 4, 6, 2), (2, 48, 2, 3, 1)]
    assert len(out.feature_pyramid) == 4 and out.grid_size == (2, 3, 1)
    assert out.last_hidden_state.shape == (2, 6, 48)  # the deepest stage as tokens (report bridge)
    model.save_pretrained(tmp_path / "enc")
    loaded = RadFMEncoder.from_pretrained(tmp_path / "enc").eval()
    assert loaded.config.architecture == "cnn"
    with torch.no_grad():
        again = loaded(x, modality_ids=torch.tensor([0, 1]))
    for a, b in zip(out.feature_maps, again.feature_maps):
        assert torch.allclose(a, b, atol=1e-5)


def test_cnn_encoder_rejects_mae_token_dropping_and_bad_shapes() -> None:
    model = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny"))
    with pytest.raises(ValueError, match="CNN"):
        model(torch.randn(1, 1, 16, 16, 16), keep_indices=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 1, 20, 16, 16))


def test_cnn_modality_embedding_changes_the_features() -> None:
    torch.manual_seed(0)
    model = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny")).eval()
    with torch.no_grad():
        model.modality_embed.weight.normal_()
        x = torch.randn(1, 1, 16, 16, 16)
        ct = model(x, modality_ids=torch.tensor([0])).feature_maps[0]
        mr = model(x, modality_ids=torch.tensor([1])).feature_maps[0]
    assert (ct - mr).abs().mean() > 1e-3
