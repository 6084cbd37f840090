"""Tests of the dense segmentation head and RadFMForDenseSegmentation (tiny encoder)."""

from __future__ import annotations

import pytest
import torch

from radfm.errors import ConfigError
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.tasks.dense_segmentation.model import (
    DenseSegmentationHead,
    RadFMDenseSegmentationConfig,
    RadFMForDenseSegmentation,
    head_spec,
)


def tiny_encoder(**overrides) -> RadFMEncoder:
    torch.manual_seed(0)
    return RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", **overrides)).eval()


def test_logits_on_the_input_grid_even_when_not_a_patch_multiple() -> None:
    model = RadFMForDenseSegmentation.from_encoder(tiny_encoder(), 3).eval()
    for shape in [(16, 16, 16), (13, 18, 22)]:
        out = model(torch.randn(2, 1, *shape)).logits
        assert out.shape == (2, 3, *shape)
        assert torch.isfinite(out).all()


def test_anisotropic_patch_and_no_skip_branch() -> None:
    enc = tiny_encoder(patch_size=(2, 8, 8))
    model = RadFMForDenseSegmentation.from_encoder(enc, 2, skip_channels=0).eval()
    assert model.head.skip is None and model.head.fuse is None
    out = model(torch.randn(1, 1, 8, 32, 24)).logits
    assert out.shape == (1, 2, 8, 32, 24)


def test_from_encoder_copies_weights_and_leaves_the_encoder_alone() -> None:
    enc = tiny_encoder()
    model = RadFMForDenseSegmentation.from_encoder(enc, 2)
    for (n, a), (_, b) in zip(enc.state_dict().items(), model.encoder.state_dict().items()):
        assert torch.equal(a, b), n
    before = enc.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        model.encoder.blocks[0].attn.qkv.weight.add_(1.0)
    assert torch.equal(enc.blocks[0].attn.qkv.weight, before)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = RadFMForDenseSegmentation.from_encoder(
        tiny_encoder(), 3, id2label={0: "background", 1: "liver", 2: "lungs"}).eval()
    with torch.no_grad():  # make the head non-trivial so the round trip compares real numbers
        for p in model.head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(1, 1, 16, 16, 16)
    y = model(x).logits
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = RadFMForDenseSegmentation.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(x).logits, y)
    assert loaded.config.id2label == {0: "background", 1: "liver", 2: "lungs"}
    assert isinstance(loaded.config.encoder_config, RadFMEncoderConfig)
    assert head_spec(loaded.config) == head_spec(model.config)
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(tmp_path)) is RadFMForDenseSegmentation  # registered model_type


def test_head_is_one_module_whose_names_avoid_lora_targets() -> None:
    model = RadFMForDenseSegmentation.from_encoder(tiny_encoder(), 2)
    assert isinstance(model.head, DenseSegmentationHead)
    for name, _ in model.head.named_modules():
        assert not any(name.endswith(t) for t in ("qkv", "proj", "fc1", "fc2")), name


def test_gradients_reach_head_and_encoder() -> None:
    model = RadFMForDenseSegmentation.from_encoder(tiny_encoder(), 2).train()
    model(torch.randn(1, 1, 16, 16, 16)).logits.square().mean().backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_modality_ids_and_bf16_autocast() -> None:
    model = RadFMForDenseSegmentation.from_encoder(tiny_encoder(), 2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    ref = model(x, modality_ids=torch.tensor([0, 1])).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, modality_ids=torch.tensor([0, 1])).logits.float()
    assert (low - ref).abs().max() < 0.25 * ref.abs().max() + 0.1


def test_config_defaults_and_errors() -> None:
    cfg = RadFMDenseSegmentationConfig(encoder_config=RadFMEncoderConfig.from_preset("tiny"), num_classes=3)
    assert cfg.id2label == {0: "background", 1: "class_1", 2: "class_2"}
    assert RadFMDenseSegmentationConfig().encoder_config.hidden_size == 384  # the "small" preset
    with pytest.raises(ConfigError):
        RadFMDenseSegmentationConfig(num_classes=0)


def cnn_encoder() -> RadFMEncoder:
    torch.manual_seed(0)
    return RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny")).eval()


def test_cnn_encoder_head_reads_every_stage_and_round_trips(tmp_path) -> None:
    """On a CNN trunk the head reads all five stages (strides 1…16), not only the four-level pyramid."""
    enc = cnn_encoder()
    levels = enc(torch.randn(1, 1, 32, 32, 32))  # the deepest stage (stride 16) must be > 1 voxel
    assert len(levels.feature_pyramid) == 4 and len(levels.feature_maps) == 5
    model = RadFMForDenseSegmentation.from_encoder(enc, 3).eval()
    assert [m.in_channels for m in model.head.lateral] == list(enc.config.cnn_channels)
    for shape in [(32, 32, 32), (13, 18, 22)]:  # padded to the trunk's total stride (16) internally
        assert model(torch.randn(1, 1, *shape)).logits.shape == (1, 3, *shape)
    x = torch.randn(1, 1, 32, 32, 32)
    y = model(x, modality_ids=torch.tensor([0])).logits
    model.save_pretrained(tmp_path)
    loaded = RadFMForDenseSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_config.architecture == "cnn"
    assert torch.equal(loaded(x, modality_ids=torch.tensor([0])).logits, y)


def test_cnn_deepest_stage_gets_gradients_and_lora_adapters_swap_heads() -> None:
    """The deepest stage trains (it feeds the head), and an adapter for other classes gets its own head."""
    from radfm.adapters.lora import LoraSpec, add_adapter, attach_lora

    model = RadFMForDenseSegmentation.from_encoder(cnn_encoder(), 2).train()
    model(torch.randn(1, 1, 32, 32, 32)).logits.square().mean().backward()
    deepest = model.encoder.trunk.stages[-1][0].conv1.weight
    assert deepest.grad is not None and deepest.grad.abs().sum() > 0
    pm = attach_lora(RadFMForDenseSegmentation.from_encoder(cnn_encoder(), 2), "liver", LoraSpec(r=2))
    assert any("stages.4" in n and "lora_A" in n for n, _ in pm.named_parameters())  # resolve_spec's CNN targets
    add_adapter(pm, "kidneys", LoraSpec(r=2), num_classes=4)
    assert pm(torch.randn(1, 1, 32, 32, 32)).logits.shape[1] == 4


def test_cnn_small_lora_of_the_fewshot_bench_stays_within_five_percent() -> None:
    """Issue 10: LoRA ≤ 5 % trainable on the shared CNN ("cnn-small"), the head included.

    Measured with 4 classes: rank 3 (the bench's) 4.53 %, rank 4 5.35 %: a higher rank would break the goal.
    """
    from radfm.adapters.lora import LoraSpec, trainable_parameters
    from radfm.eval.benchmarks.fewshot import lora_for
    from radfm.tasks.dense_segmentation.strategy import build_model

    torch.manual_seed(0)
    enc = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-small")).eval()
    spec = lora_for(enc)
    assert spec.targets and all(t.startswith("stages.") for t in spec.targets)  # the trunk's residual convs
    counts = trainable_parameters(build_model(enc, 4, "lora", lora=spec))
    assert 0 < counts["percent"] <= 5.0, counts
    bigger = trainable_parameters(build_model(enc, 4, "lora", lora=LoraSpec(r=spec.r + 1, alpha=2.0 * (spec.r + 1))))
    assert bigger["percent"] > 5.0, bigger  # so the bench's rank is the highest that meets the goal
