"""The 3D MAE (radfm.models.mae): patch helpers, the masked loss, masks, save/load."""

from __future__ import annotations

import pytest
import torch

from radfm.errors import ConfigError
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.models.mae import (
    RadFMForMaskedVolumeModeling,
    RadFMMAEConfig,
    flat_patch_baseline,
    mask_from_keep_indices,
    masked_reconstruction_loss,
    patchify,
    unpatchify,
)


def tiny_mae(**overrides) -> RadFMForMaskedVolumeModeling:
    torch.manual_seed(0)
    config = RadFMMAEConfig(encoder_config=RadFMEncoderConfig.from_preset("tiny"), decoder_hidden_size=32,
                            decoder_layers=1, decoder_heads=2, **overrides)
    return RadFMForMaskedVolumeModeling(config).eval()


@pytest.mark.parametrize("patch", [(4, 4, 4), (2, 4, 8)])
def test_patchify_and_unpatchify_are_inverses(patch) -> None:
    x = torch.randn(2, 3, 8, 12, 16)
    p = patchify(x, patch)
    grid = (8 // patch[0], 12 // patch[1], 16 // patch[2])
    assert p.shape == (2, grid[0] * grid[1] * grid[2], 3 * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(p, patch, grid, 3), x)


def test_patchify_matches_the_patch_embedding_layout() -> None:
    """Token order (z-major) and voxel order (C, pd, ph, pw) are those of the encoder's Conv3d."""
    conv = torch.nn.Conv3d(2, 5, kernel_size=(2, 4, 4), stride=(2, 4, 4))
    x = torch.randn(1, 2, 4, 8, 12)
    tokens = conv(x).flatten(2).transpose(1, 2)  # (1, N, 5), z-major
    manual = patchify(x, (2, 4, 4)) @ conv.weight.reshape(5, -1).T + conv.bias
    torch.testing.assert_close(tokens, manual, atol=1e-5, rtol=1e-5)


def test_loss_counts_only_hidden_patches() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    keep = torch.tensor([[0, 3, 7], [1, 2, 9]])
    mask = mask_from_keep_indices(keep, 10)
    assert mask.sum().item() == 14 and mask[0, 3] == 0 and mask[0, 4] == 1
    loss, per_sample = masked_reconstruction_loss(pred, target, mask)
    changed = pred.clone()
    changed[0, [0, 3, 7]] += 100.0  # visible patches: must not matter
    changed[1, [1, 2, 9]] -= 50.0
    loss2, per_sample2 = masked_reconstruction_loss(changed, target, mask)
    assert torch.equal(loss, loss2) and torch.equal(per_sample, per_sample2)
    changed[0, 4] += 1.0  # a hidden patch: must matter
    assert masked_reconstruction_loss(changed, target, mask)[0] > loss


def test_norm_pix_targets_and_flat_patches() -> None:
    target = torch.cat([torch.full((1, 1, 8), 3.0), torch.arange(8.0).reshape(1, 1, 8)], dim=1)  # flat, ramp
    mask = torch.ones(1, 2)
    zero = torch.zeros(1, 2, 8)
    _, raw = masked_reconstruction_loss(zero, target, mask, norm_pix_loss=False)
    assert raw.item() == pytest.approx((9.0 * 8 + (torch.arange(8.0) ** 2).sum().item()) / 16)
    # normalised: the flat patch's target is 0 and the ramp has unit variance -> MSE 1 on it
    _, norm = masked_reconstruction_loss(zero, target, mask, norm_pix_loss=True, norm_pix_eps=1e-6)
    assert norm.item() == pytest.approx(0.5, abs=1e-4)


def test_flat_patch_baseline_is_the_loss_of_flat_predictions() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8, 8)
    mask = mask_from_keep_indices(torch.tensor([[0, 5], [2, 3]]), 8)
    target = patchify(x, (4, 4, 4))
    for norm in (True, False):
        flat = target.mean(-1, keepdim=True).expand_as(target)
        pred = torch.zeros_like(target) if norm else flat
        expected = masked_reconstruction_loss(pred, target, mask, norm_pix_loss=norm, norm_pix_eps=1e-2)
        got = flat_patch_baseline(x, mask, (4, 4, 4), norm_pix_loss=norm, norm_pix_eps=1e-2)
        torch.testing.assert_close(got, expected)
    # without norm_pix it equals the mean within-patch variance of the hidden patches
    var = target.var(-1, unbiased=False)
    assert flat_patch_baseline(x, mask, (4, 4, 4), norm_pix_loss=False)[0].item() == pytest.approx(
        float((var * mask).sum() / mask.sum()), rel=1e-5)


def test_forward_shapes_and_seeded_masks() -> None:
    model = tiny_mae(mask_ratio=0.75)
    x = torch.randn(2, 1, 16, 16, 16)
    ids = torch.tensor([0, 1])
    a = model(x, modality_ids=ids, generator=torch.Generator().manual_seed(3))
    b = model(x, modality_ids=ids, generator=torch.Generator().manual_seed(3))
    c = model(x, modality_ids=ids, generator=torch.Generator().manual_seed(4))
    assert a.predictions.shape == (2, 64, 64) and a.mask.shape == (2, 64)
    assert a.keep_indices.shape == (2, 16) and a.mask.sum().item() == 2 * 48
    assert torch.equal(a.keep_indices, b.keep_indices) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.keep_indices, c.keep_indices)
    assert a.per_sample_loss.shape == (2,) and torch.isfinite(a.loss)


def test_gradients_reach_encoder_and_decoder_but_not_the_pyramid() -> None:
    model = tiny_mae().train()
    out = model(torch.randn(2, 1, 16, 16, 16), modality_ids=torch.tensor([0, 1]),
                generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    named = dict(model.named_parameters())
    assert named["encoder.blocks.0.attn.qkv.weight"].grad is not None
    assert named["encoder.modality_embed.weight"].grad is not None
    assert named["decoder.mask_token"].grad is not None
    assert all(p.grad is None for n, p in named.items() if ".pyramid." in n)  # hence frozen in pretraining


def test_save_load_round_trip_gives_identical_loss(tmp_path) -> None:
    model = tiny_mae(mask_ratio=0.6, norm_pix_eps=1e-2)
    x = torch.randn(2, 1, 16, 16, 16)
    keep = model.random_keep_indices(2, 64, generator=torch.Generator().manual_seed(0))
    before = model(x, modality_ids=torch.tensor([0, 1]), keep_indices=keep)
    model.save_pretrained(tmp_path / "mae")
    loaded = RadFMForMaskedVolumeModeling.from_pretrained(tmp_path / "mae").eval()
    assert isinstance(loaded.config.encoder_config, RadFMEncoderConfig)
    assert loaded.config.mask_ratio == 0.6 and loaded.config.norm_pix_eps == 1e-2
    after = loaded(x, modality_ids=torch.tensor([0, 1]), keep_indices=keep)
    assert torch.equal(before.loss, after.loss) and torch.equal(before.predictions, after.predictions)


def test_encoder_exports_alone(tmp_path) -> None:
    model = tiny_mae()
    assert type(model.encoder) is RadFMEncoder
    model.encoder.save_pretrained(tmp_path / "encoder")
    enc = RadFMEncoder.from_pretrained(tmp_path / "encoder").eval()
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(enc(x).last_hidden_state, model.encoder(x).last_hidden_state, rtol=0, atol=0)


def test_config_errors_are_clear() -> None:
    enc = RadFMEncoderConfig.from_preset("tiny")
    with pytest.raises(ConfigError, match="mask_ratio"):
        RadFMMAEConfig(encoder_config=enc, mask_ratio=1.0)
    with pytest.raises(ConfigError, match="divisible"):
        RadFMMAEConfig(encoder_config=enc, decoder_hidden_size=30, decoder_heads=4)
    # the encoder config may arrive as a dict (config.json) and is rebuilt as its class
    cfg = RadFMMAEConfig(encoder_config=enc.to_dict())
    assert isinstance(cfg.encoder_config, RadFMEncoderConfig) and cfg.encoder_config.hidden_size == 64
