"""Prompt encoder, mask decoder and model: shapes, the 3D positional code, save/load, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from segtest_utils import tiny_model
from torch import nn

from radfm.adapters.lora import load_encoder_adapter, read_adapter_meta, save_encoder_adapter
from radfm.errors import InputError
from radfm.tasks.segmentation.mask_decoder import conv_transpose_cl
from radfm.tasks.segmentation.model import SEG_TASK, RadFMPromptSegmenter, attach_seg_lora
from radfm.tasks.segmentation.prompt_encoder import PositionEmbeddingRandom3d, PromptEncoder3d


def test_positional_code_of_a_point_equals_the_dense_code_at_its_token() -> None:
    """A click at a token's centre must carry that token's code (else clicks point elsewhere)."""
    pe = PositionEmbeddingRandom3d(8, reference=64.0)
    dense = pe((3, 4, 5), stride=(8, 8, 8))
    assert dense.shape == (16, 3, 4, 5)
    # token (1, 2, 3) covers voxels 8..15 etc.; its centre is voxel 11.5 → click at voxel 11 (+0.5 shift)
    point = torch.tensor([[[1 * 8 + 4.0, 2 * 8 + 4.0, 3 * 8 + 4.0]]])
    assert torch.allclose(pe.forward_with_coords(point)[0, 0], dense[:, 1, 2, 3], atol=1e-5)


def test_prompt_encoder_shapes() -> None:
    enc = PromptEncoder3d(embed_dim=16, patch_size=(8, 8, 8), pe_reference=64.0, mask_in_chans=8, num_classes=2)
    grid = (2, 3, 4)
    pts = (torch.rand(2, 3, 3) * 16, torch.tensor([[1, 0, 1], [1, -1, -1]]))
    sparse, dense = enc(grid_size=grid, batch_size=2, points=pts)
    assert sparse.shape == (2, 4, 16)  # 3 points + 1 padding token (no box)
    assert dense.shape == (2, 16, *grid)
    sparse, _ = enc(grid_size=grid, batch_size=2, points=pts, boxes=torch.tensor([[0, 0, 0, 9, 9, 9.0]] * 2),
                    class_ids=torch.tensor([1, -1]))
    assert sparse.shape == (2, 3 + 2 + 1, 16)  # points, two box corners, one class token
    masks = torch.randn(2, 1, *enc.mask_input_size(grid))
    assert enc.mask_input_size(grid) == (8, 12, 16)
    _, dense = enc(grid_size=grid, batch_size=2, masks=masks)
    assert dense.shape == (2, 16, *grid)
    assert enc.get_dense_pe(grid).shape == (1, 16, *grid)


def test_conv_transpose_as_matmul_equals_conv_transpose3d() -> None:
    conv = nn.ConvTranspose3d(6, 4, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    x = torch.randn(2, 6, 3, 4, 5)
    ref = conv(x)
    out = conv_transpose_cl(x.permute(0, 2, 3, 4, 1), conv).permute(0, 4, 1, 2, 3)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("patch", [8, (4, 8, 8)])
def test_model_output_shapes_full_resolution(patch: int | tuple[int, int, int]) -> None:
    model = tiny_model(patch=8)
    if isinstance(patch, tuple):  # anisotropic (thick-slice) patch
        from radfm.models.encoder import RadFMEncoder
        from radfm.models.encoder_config import RadFMEncoderConfig

        enc = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", hidden_size=32, num_layers=2, num_heads=2,
                                                          patch_size=patch))
        model = RadFMPromptSegmenter.from_encoder(enc, window_size=[16, 32, 32], decoder_dim=32, decoder_heads=2)
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        out = model(x, point_coords=torch.tensor([[[5.0, 10, 12]], [[8.0, 20, 3]]]),
                    point_labels=torch.tensor([[1], [1]]))
        assert out.masks.shape == (2, 3, 16, 32, 32)  # full input resolution, three candidates
        assert out.iou_predictions.shape == (2, 3)
        grid = tuple(s // p for s, p in zip((16, 32, 32), model.patch_size))
        assert out.low_res_logits.shape == (2, 3, *(4 * g for g in grid))
        again = model(x, boxes=torch.tensor([[0, 0, 0, 10, 20, 20.0]] * 2), mask_inputs=out.low_res_logits[:, :1],
                      multimask_output=False)
        assert again.masks.shape == (2, 1, 16, 32, 32)
    with pytest.raises(InputError, match="no prompt"):
        model(x)


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
    # Identical masks; logits equal up to float summation order (the loaded tensors' memory layout).
    assert torch.equal(a.masks > 0, b.masks > 0)
    assert torch.allclose(a.masks, b.masks, atol=1e-5) and torch.allclose(a.iou_predictions, b.iou_predictions, atol=1e-5)


def test_save_without_encoder_and_lora_adapter_round_trip(tmp_path: Path) -> None:
    """The shipped layout: head in model.safetensors, encoder from elsewhere, LoRA factors apart."""
    model = tiny_model()
    peft_model = attach_seg_lora(model)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("mask_decoder" in n for n in trainable)
    assert not any("encoder.blocks" in n and "lora_" not in n for n in trainable)  # the encoder stays frozen
    with torch.no_grad():  # make the LoRA update non-zero so the test can see it
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_encoder_adapter(peft_model, tmp_path / "m" / "adapter", task=SEG_TASK)
    assert read_adapter_meta(tmp_path / "m" / "adapter")["lora"]["r"] == 8
    base = peft_model.unload()  # the base model without LoRA layers, same (untouched) encoder weights
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
        assert torch.allclose(merged(x, **kw).masks, expected, atol=1e-5)
        assert not torch.allclose(base(x, **kw).masks, expected, atol=1e-4)  # LoRA changed the output
    other = tiny_model(seed=5)
    with pytest.raises(Exception, match="trained on encoder"):
        load_encoder_adapter(other, tmp_path / "m" / "adapter")


def test_prompt_maps_are_gaussian_clicks_and_box_insides() -> None:
    from radfm.tasks.segmentation.prompt_encoder import render_prompt_maps

    pts = (torch.tensor([[[4.0, 5.0, 6.0], [10.0, 2.0, 3.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[2.0, 3.0, 4.0, 6.0, 7.0, 8.0]])
    m = render_prompt_maps((12, 12, 12), batch_size=1, points=pts, boxes=box, sigma=2.0)
    assert m.shape == (1, 3, 12, 12, 12)
    assert m[0, 0, 4, 5, 6] == pytest.approx(1.0) and m[0, 1, 10, 2, 3] == pytest.approx(1.0)
    assert m[0, 0, 4, 5, 8] == pytest.approx(float(torch.exp(torch.tensor(-0.5))), rel=1e-5)  # 2 voxels = 1 sigma
    assert m[0, 0, 10, 2, 3] < 1e-2 and m[0, 1, 4, 5, 6] < 1e-2  # 3.7 sigma apart
    inside = torch.zeros(12, 12, 12)
    inside[2:7, 3:8, 4:9] = 1
    assert torch.equal(m[0, 2], inside)
    low = render_prompt_maps((6, 6, 6), batch_size=1, points=pts, scale=(0.5, 0.5, 0.5), sigma=2.0)
    # map voxel i is input coordinate 2i + 0.5: the click at z = 4 is nearest map voxel 2 (4.5)
    assert int(torch.argmax(low[0, 0, :, 2, 3])) == 2
    assert float(low[0, 0, 2, 2, 3]) == pytest.approx(float(m[0, 0, 4, 5, 6]) * float(torch.exp(torch.tensor(-0.5 * 3 * 0.25 ** 2))), rel=1e-4)
