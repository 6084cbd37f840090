"""Prompt maps, the prompt-fused decoder and the model: shapes, save/load, LoRA, image dependence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from segtest_utils import tiny_model

from radfm.adapters.lora import load_encoder_adapter, read_adapter_meta, save_encoder_adapter
from radfm.errors import ConfigError, InputError
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.tasks.segmentation.model import SEG_TASK, RadFMPromptSegmenter, RadFMSegConfig, attach_seg_lora
from radfm.tasks.segmentation.prompts import NUM_PROMPT_MAPS, render_prompt_maps


def test_prompt_maps_are_gaussian_clicks_box_inside_and_previous_mask() -> None:
    pts = (torch.tensor([[[4.0, 5.0, 6.0], [10.0, 2.0, 3.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[2.0, 3.0, 4.0, 6.0, 7.0, 8.0]])
    prev = torch.full((1, 1, 12, 12, 12), -10.0)
    prev[..., 0, 0, 0] = 10.0
    m = render_prompt_maps((12, 12, 12), batch_size=1, points=pts, boxes=box, mask_logits=prev, sigma=2.0)
    assert m.shape == (1, NUM_PROMPT_MAPS, 12, 12, 12)
    assert m[0, 0, 4, 5, 6] == pytest.approx(1.0) and m[0, 1, 10, 2, 3] == pytest.approx(1.0)
    assert m[0, 0, 4, 5, 8] == pytest.approx(float(torch.exp(torch.tensor(-0.5))), rel=1e-5)  # 2 voxels = 1 sigma
    assert m[0, 0, 10, 2, 3] < 1e-2 and m[0, 1, 4, 5, 6] < 1e-2
    inside = torch.zeros(12, 12, 12)
    inside[2:7, 3:8, 4:9] = 1
    assert torch.equal(m[0, 2], inside)
    assert m[0, 3, 0, 0, 0] > 0.99 and m[0, 3, 5, 5, 5] < 0.01 and torch.all(m[0, 4] == 1)
    nan_box = render_prompt_maps((4, 4, 4), batch_size=1, boxes=torch.full((1, 6), float("nan")))
    assert nan_box.sum() == 0  # a NaN row means "no box" (batch padding)


def test_model_output_shapes_full_resolution_and_needs_a_prompt() -> None:
    model = tiny_model()
    x = torch.randn(2, 1, 16, 32, 24)
    with torch.no_grad():
        out = model(x, point_coords=torch.tensor([[[5.0, 10, 12]], [[8.0, 20, 3]]]),
                    point_labels=torch.tensor([[1], [1]]))
        assert out.masks.shape == (2, 1, 16, 32, 24) and out.iou_predictions.shape == (2, 1)
        assert torch.all((out.iou_predictions >= 0) & (out.iou_predictions <= 1))
        again = model(x, boxes=torch.tensor([[0, 0, 0, 10, 20, 20.0]] * 2), mask_inputs=out.low_res_logits,
                      class_ids=torch.tensor([0, -1]))
        assert again.masks.shape == (2, 1, 16, 32, 24)
    with pytest.raises(InputError, match="no prompt"):
        model(x)
    with pytest.raises(InputError, match="mask_inputs"):
        model(x, mask_inputs=torch.zeros(2, 1, 8, 8, 8))


def test_prompt_segmenter_refuses_a_vit_encoder() -> None:
    with pytest.raises(ConfigError, match="CNN encoder"):
        RadFMSegConfig(encoder_config=RadFMEncoderConfig.from_preset("tiny").to_dict())


def test_every_decoder_scale_reads_the_image_and_the_click() -> None:
    """Image dependence by construction: the mask logits change with the image and with the click."""
    model = tiny_model()
    x = torch.randn(1, 1, 32, 32, 32)
    kw = {"point_coords": torch.tensor([[[16.0, 16, 16]]]), "point_labels": torch.tensor([[1]])}
    with torch.no_grad():
        a = model(x, **kw).masks
        b = model(torch.randn(1, 1, 32, 32, 32), **kw).masks
        c = model(x, point_coords=torch.tensor([[[4.0, 4, 4]]]), point_labels=torch.tensor([[1]])).masks
    assert (a - b).abs().mean() > 1e-3 and (a - c).abs().mean() > 1e-3


def test_save_load_round_trip_identical_masks(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "preprocess_plan.json").is_file()
    loaded = RadFMPromptSegmenter.from_pretrained(tmp_path / "m")
    assert loaded.preprocess_plan == model.preprocess_plan
    x = torch.randn(1, 1, 32, 32, 32)
    kw = {"point_coords": torch.tensor([[[10.0, 12, 14], [20, 20, 20]]]), "point_labels": torch.tensor([[1, 0]])}
    with torch.no_grad():
        a, b = model(x, **kw), loaded(x, **kw)
    assert torch.equal(a.masks > 0, b.masks > 0)
    assert torch.allclose(a.masks, b.masks, atol=1e-5) and torch.allclose(a.iou_predictions, b.iou_predictions, atol=1e-5)


def test_save_without_encoder_and_lora_adapter_round_trip(tmp_path: Path) -> None:
    """The adapted layout: decoder in model.safetensors, encoder from elsewhere, LoRA factors apart."""
    model = tiny_model()
    peft_model = attach_seg_lora(model)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("decoder" in n for n in trainable)
    assert not any("encoder.trunk" in n and "lora_" not in n for n in trainable)  # the encoder stays frozen
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_encoder_adapter(peft_model, tmp_path / "m" / "adapter", task=SEG_TASK)
    assert read_adapter_meta(tmp_path / "m" / "adapter")["lora"]["r"] == 8
    base = peft_model.unload()
    base.save_pretrained(tmp_path / "m", include_encoder=False)
    x = torch.randn(1, 1, 32, 32, 32)
    kw = {"point_coords": torch.tensor([[[10.0, 12, 14]]]), "point_labels": torch.tensor([[1]])}
    ref_model = tiny_model()
    ref_model.load_state_dict(base.state_dict())
    with torch.no_grad():
        expected = load_encoder_adapter(ref_model, tmp_path / "m" / "adapter")(x, **kw).masks
    loaded = RadFMPromptSegmenter.from_pretrained(tmp_path / "m", encoder=tiny_model().encoder)
    merged = load_encoder_adapter(loaded, tmp_path / "m" / "adapter")
    with torch.no_grad():
        assert torch.allclose(merged(x, **kw).masks, expected, atol=1e-4)
        assert not torch.allclose(base(x, **kw).masks, expected, atol=1e-4)
    with pytest.raises(Exception, match="trained on encoder"):
        load_encoder_adapter(tiny_model(seed=5), tmp_path / "m" / "adapter")
