"""Masked volume modelling (MAE in 3D): how the shared encoder is pretrained without labels.

Read top to bottom: patchify helpers, the masked loss, the config, the light decoder, the model.

Why MAE: CT/MR volumes come without labels, and a high mask ratio (75 % of the patches hidden)
makes the encoder learn anatomy and tissue contrast while it only ever sees a quarter of the
tokens, which keeps pretraining affordable on a CPU. The encoder runs on the visible tokens only
(``keep_indices``); a small transformer decoder gets the encoded tokens back on the full grid
with a learned mask token at each hidden position, adds the fixed 3D sin-cos code and predicts
the voxels of every patch. The loss is the MSE on the hidden patches only, against per-patch
normalised voxels (``norm_pix_loss``, MAE's default).

Shapes: volumes ``(B, C, D, H, W)``; patches are flattened z-major like the encoder's tokens
(``N = gd * gh * gw``) and each patch's voxels in ``(C, pd, ph, pw)`` order, the layout of the
patch-embedding Conv3d kernel, so ``P = C * pd * ph * pw``.

CNN encoders (``architecture="cnn"``) are pretrained the same way with a convolutional twist
(SparK / Models Genesis style): the hidden patches (``mask_patch_size``, default 8³ voxels) are
set to zero in the input, the trunk encodes the whole masked volume, and a light U-shaped decoder
(:class:`CNNInpaintDecoder`) predicts every voxel; the loss and the flat-patch yardstick are the
same as the ViT's, on the hidden patches only.

``model.encoder`` is a plain :class:`~radfm.models.encoder.RadFMEncoder`:
``model.encoder.save_pretrained(dir)`` exports the shared encoder alone. Its feature pyramid is
not used by MAE (no gradient); the training loop freezes it (see ``radfm.training.pretrain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from radfm.errors import ConfigError, InputError
from radfm.models.cnn import ConvNormAct
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.models.encoder_input import random_keep_indices
from radfm.models.init_weights import init_standard_layer
from radfm.models.pos_embed import sincos_pos_embed_3d
from radfm.models.vit_blocks import Block

__all__ = [
    "CNNInpaintDecoder",
    "MAEDecoder",
    "RadFMForMaskedVolumeModeling",
    "RadFMMAEConfig",
    "RadFMMAEOutput",
    "flat_patch_baseline",
    "mask_from_keep_indices",
    "masked_reconstruction_loss",
    "patchify",
    "unpatchify",
]


# ----------------------------------------------------------------------------- patch helpers
def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, N, C * pd * ph * pw)``, tokens z-major, voxels ``(C, pd, ph, pw)``."""
    b, c, d, h, w = x.shape
    pd, ph, pw = patch_size
    if d % pd or h % ph or w % pw:
        raise InputError(f"shape {tuple(x.shape)} is not a multiple of the patch size {tuple(patch_size)}.")
    gd, gh, gw = d // pd, h // ph, w // pw
    x = x.reshape(b, c, gd, pd, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, gd * gh * gw, c * pd * ph * pw)


def unpatchify(
    patches: torch.Tensor, patch_size: tuple[int, int, int], grid_size: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, C * pd * ph * pw)`` -> ``(B, C, gd*pd, gh*ph, gw*pw)``."""
    b, n, p = patches.shape
    pd, ph, pw = patch_size
    gd, gh, gw = grid_size
    if n != gd * gh * gw or p != channels * pd * ph * pw:
        raise InputError(
            f"patches of shape {tuple(patches.shape)} do not match grid {tuple(grid_size)}, "
            f"patch {tuple(patch_size)} and {channels} channel(s)."
        )
    x = patches.reshape(b, gd, gh, gw, channels, pd, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, gd * pd, gh * ph, gw * pw)


def mask_from_keep_indices(keep_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``(B, N_keep)`` visible-token indices -> ``(B, N)`` float mask, 1 = hidden (predicted), 0 = visible."""
    mask = torch.ones(keep_indices.shape[0], num_tokens, device=keep_indices.device)
    return mask.scatter(1, keep_indices.long(), 0.0)


def masked_reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    norm_pix_loss: bool = True,
    norm_pix_eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on the hidden patches only.

    Args:
        pred, target: ``(B, N, P)`` predicted and true patch voxels (``target`` from :func:`patchify`).
        mask: ``(B, N)``, 1 where the patch was hidden. Visible patches do not count: MAE learns
            from predicting what it did not see, and copying visible voxels would be trivial.
        norm_pix_loss: compare against each patch normalised to zero mean / unit variance (MAE:
            better features, and bright bone does not outweigh soft tissue).
        norm_pix_eps: added to the patch variance. Why it is a setting: flat patches (air, a
            homogeneous organ) hold only noise, which per-patch normalisation would blow up to
            unit variance and ask the model to predict; a floor of ``sqrt(eps)`` in normalised
            intensity units (about 1 for CT over [-1000, 1000] HU) keeps such patches quiet.
    Returns:
        ``(loss, per_sample)``: scalar mean over all hidden patches of the batch and ``(B,)``
        mean over each sample's hidden patches, both float32.
    """
    pred = pred.float()
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + norm_pix_eps).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.to(per_patch.dtype)
    per_sample = (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
    return loss, per_sample


def flat_patch_baseline(
    pixel_values: torch.Tensor,
    mask: torch.Tensor,
    patch_size: tuple[int, int, int],
    *,
    norm_pix_loss: bool = True,
    norm_pix_eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of predicting every hidden patch as a constant at its own mean intensity.

    Why: the yardstick of an MAE loss. With ``norm_pix_loss`` this is predicting 0, which a
    fresh model learns within a few dozen steps; only a loss below it shows that the model
    predicts structure inside patches (edges, organ boundaries) from their context. Returns
    ``(loss, per_sample)`` like :func:`masked_reconstruction_loss`.
    """
    target = patchify(pixel_values.float(), patch_size)
    pred = torch.zeros_like(target) if norm_pix_loss else target.mean(dim=-1, keepdim=True).expand_as(target)
    return masked_reconstruction_loss(pred, target, mask, norm_pix_loss=norm_pix_loss, norm_pix_eps=norm_pix_eps)


# ----------------------------------------------------------------------------- config
@strict
class RadFMMAEConfig(PreTrainedConfig):
    r"""Configuration of :class:`RadFMForMaskedVolumeModeling` (encoder + light MAE decoder).

    A composite config in transformers' style: ``encoder_config`` is a full
    :class:`RadFMEncoderConfig` (a dict in ``config.json``, rebuilt on load through
    ``sub_configs_defaults``, as ``VisionEncoderDecoderConfig`` nests its encoder and decoder).

    Args:
        encoder_config: the shared encoder (``RadFMEncoderConfig`` or its dict; ``None`` = "small").
        decoder_hidden_size, decoder_layers, decoder_heads, decoder_mlp_ratio: the decoder's
            transformer (narrow and shallow on purpose: it is thrown away after pretraining and
            runs on all ``N`` tokens, while the encoder sees only ``N * (1 - mask_ratio)``).
        mask_ratio: fraction of patches hidden per sample (MAE: 0.75; volumes are redundant enough
            for an even higher ratio).
        norm_pix_loss: predict per-patch normalised voxels (see :func:`masked_reconstruction_loss`).
        norm_pix_eps: variance floor of that normalisation, in squared normalised-intensity units.
        mask_patch_size: voxels per masked patch (``None``: the encoder's patch size for a ViT, 8
            for a CNN, whose 16-voxel stride would hide 3 cm cubes at 2 mm).
    """

    model_type = "radfm_mae"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {"encoder_config": RadFMEncoderConfig}

    encoder_config: RadFMEncoderConfig | dict | None = None
    decoder_hidden_size: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float | int = 4.0
    mask_ratio: float | int = 0.75
    norm_pix_loss: bool = True
    norm_pix_eps: float | int = 1e-6
    mask_patch_size: int | list[int] | tuple[int, ...] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.decoder_hidden_size % max(self.decoder_heads, 1) or self.decoder_heads < 1:
            raise ConfigError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by decoder_heads "
                f"({self.decoder_heads})."
            )
        if self.decoder_hidden_size < 6 or self.decoder_layers < 1:
            raise ConfigError("decoder_hidden_size must be >= 6 and decoder_layers >= 1.")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if self.norm_pix_eps <= 0:
            raise ConfigError(f"norm_pix_eps must be > 0, got {self.norm_pix_eps}.")
        super().__post_init__(**kwargs)


# ----------------------------------------------------------------------------- decoder
class MAEDecoder(nn.Module):
    """Encoded visible tokens -> voxel predictions for every patch of the grid.

    ``(B, Pre + N_keep, hidden)`` + ``keep_indices (B, N_keep)`` -> ``(B, N, P)``; ``Pre`` prefix
    (class) tokens are carried through the blocks and dropped before the prediction.
    """

    def __init__(
        self,
        *,
        encoder_hidden_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        patch_voxels: int,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Linear(encoder_hidden_size, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.blocks = nn.ModuleList(
            Block(hidden_size=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, layer_norm_eps=layer_norm_eps)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.pred = nn.Linear(hidden_size, patch_voxels)

    def forward(
        self,
        latent: torch.Tensor,
        keep_indices: torch.Tensor,
        grid_size: tuple[int, int, int],
        num_prefix_tokens: int = 0,
    ) -> torch.Tensor:
        x = self.embed(latent)
        prefix, visible = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        b, _, c = visible.shape
        n = grid_size[0] * grid_size[1] * grid_size[2]
        full = self.mask_token.to(visible.dtype).expand(b, n, c)
        # Put the encoded tokens back at their grid positions; mask tokens everywhere else.
        full = full.scatter(1, keep_indices.long()[:, :, None].expand(-1, -1, c), visible)
        full = full + sincos_pos_embed_3d(grid_size, c, device=full.device, dtype=full.dtype)
        x = torch.cat([prefix, full], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x[:, num_prefix_tokens:]))


class CNNInpaintDecoder(nn.Module):
    """Stage maps of a CNN trunk (finest first) → a voxel prediction ``(B, C, D, H, W)``.

    Transposed conv ×2, add the skip of that stage, one conv-norm-act, up to full resolution, then
    a 1×1 conv. Light on purpose: it is thrown away after pretraining.
    """

    def __init__(self, *, channels: list[int], out_channels: int) -> None:
        super().__init__()
        n = len(channels) - 1
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels[i + 1], channels[i], 2, stride=2)
                                for i in reversed(range(n)))
        self.conv = nn.ModuleList(ConvNormAct(channels[i], channels[i]) for i in reversed(range(n)))
        self.pred = nn.Conv3d(channels[0], out_channels, kernel_size=1)

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = features[-1]
        for j, (up, conv) in enumerate(zip(self.up, self.conv)):
            x = conv(up(x) + features[len(features) - 2 - j].to(x.dtype))
        return self.pred(x)


# ----------------------------------------------------------------------------- the model
@dataclass
class RadFMMAEOutput(ModelOutput):
    """Output of :class:`RadFMForMaskedVolumeModeling`.

    Args:
        loss: scalar masked-reconstruction MSE (float32).
        per_sample_loss: ``(B,)`` the same per sample.
        predictions: ``(B, N, P)`` predicted voxels of every patch (normalised patches when
            ``norm_pix_loss``; :func:`unpatchify` turns them into a volume).
        mask: ``(B, N)`` 1 = hidden patch (counted in the loss), 0 = visible.
        keep_indices: ``(B, N_keep)`` the visible tokens.
    """

    loss: torch.Tensor | None = None
    per_sample_loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    keep_indices: torch.Tensor | None = None


class RadFMForMaskedVolumeModeling(PreTrainedModel):
    """3D masked autoencoder around the shared :class:`RadFMEncoder` (``self.encoder``)."""

    config_class = RadFMMAEConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: RadFMMAEConfig) -> None:
        super().__init__(config)
        enc: RadFMEncoderConfig = config.encoder_config
        self.encoder = RadFMEncoder(enc)
        pd, ph, pw = enc.patch_size
        if enc.architecture == "cnn":
            self.decoder = CNNInpaintDecoder(channels=list(enc.cnn_channels), out_channels=enc.in_channels)
            self.post_init()
            return
        self.decoder = MAEDecoder(
            encoder_hidden_size=enc.hidden_size,
            hidden_size=config.decoder_hidden_size,
            num_layers=config.decoder_layers,
            num_heads=config.decoder_heads,
            mlp_ratio=config.decoder_mlp_ratio,
            patch_voxels=enc.in_channels * pd * ph * pw,
            layer_norm_eps=enc.layer_norm_eps,
        )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE initialisation of the decoder (the encoder initialises itself as a sub-model)."""
        if init_standard_layer(module, convs=self.config.encoder_config.architecture == "cnn"):
            return
        if isinstance(module, MAEDecoder):
            init.normal_(module.mask_token, std=0.02)

    @property
    def mask_patch_size(self) -> tuple[int, int, int]:
        """Voxels per masked (and predicted) patch."""
        m = self.config.mask_patch_size
        if m is None:
            enc = self.config.encoder_config
            return (8, 8, 8) if enc.architecture == "cnn" else tuple(enc.patch_size)  # type: ignore[return-value]
        return (int(m),) * 3 if isinstance(m, int) else tuple(int(v) for v in m)  # type: ignore[return-value]

    def grid_size(self, spatial_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Mask grid ``(gd, gh, gw)`` of an input with spatial shape ``(D, H, W)`` (the ViT's token grid)."""
        return tuple(s // p for s, p in zip(spatial_shape, self.mask_patch_size))  # type: ignore[return-value]

    def random_keep_indices(
        self, batch_size: int, num_tokens: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, N_keep)`` sorted visible-token indices at ``config.mask_ratio``, drawn on the
        generator's device (CPU by default) so a seeded mask is the same on every machine."""
        device = generator.device if generator is not None else None
        return random_keep_indices(batch_size, num_tokens, mask_ratio=self.config.mask_ratio,
                                   generator=generator, device=device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        modality_ids: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RadFMMAEOutput:
        """Hide patches, encode the rest, predict the hidden voxels.

        Args:
            pixel_values: ``(B, C, D, H, W)`` normalised intensities, ``(D, H, W)`` multiples of
                the encoder's patch size.
            modality_ids: ``(B,)`` long (``MODALITY_IDS``) or ``None``.
            keep_indices: ``(B, N_keep)`` visible tokens; ``None`` draws them at
                ``config.mask_ratio`` from ``generator`` (deterministic when one is given).
            generator: a seeded ``torch.Generator`` for the mask (CPU generators work for any
                device; the indices are moved to the input's device).
        Returns:
            :class:`RadFMMAEOutput`.
        """
        grid = self.grid_size(tuple(pixel_values.shape[2:]))
        n = grid[0] * grid[1] * grid[2]
        if keep_indices is None:
            keep_indices = self.random_keep_indices(pixel_values.shape[0], n, generator=generator)
        keep_indices = keep_indices.to(pixel_values.device)
        if self.config.encoder_config.architecture == "cnn":
            return self._forward_cnn(pixel_values, modality_ids, keep_indices, grid)
        enc = self.encoder(pixel_values, modality_ids=modality_ids, keep_indices=keep_indices, output_pyramid=False)
        pred = self.decoder(enc.last_hidden_state, keep_indices, grid, self.encoder.num_prefix_tokens)
        mask = mask_from_keep_indices(keep_indices, n)
        target = patchify(pixel_values, self.config.encoder_config.patch_size)
        loss, per_sample = masked_reconstruction_loss(
            pred, target, mask, norm_pix_loss=self.config.norm_pix_loss, norm_pix_eps=self.config.norm_pix_eps
        )
        return RadFMMAEOutput(loss=loss, per_sample_loss=per_sample, predictions=pred, mask=mask,
                              keep_indices=keep_indices)


    def _forward_cnn(self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None,
                     keep_indices: torch.Tensor, grid: tuple[int, int, int]) -> RadFMMAEOutput:
        n = grid[0] * grid[1] * grid[2]
        mask = mask_from_keep_indices(keep_indices, n)
        hidden = F.interpolate(mask.reshape(-1, 1, *grid), scale_factor=self.mask_patch_size, mode="nearest")
        masked = pixel_values * (1.0 - hidden.to(pixel_values.dtype))
        feats = self.encoder(masked, modality_ids=modality_ids).feature_maps
        pred = patchify(self.decoder(feats), self.mask_patch_size)
        target = patchify(pixel_values, self.mask_patch_size)
        loss, per_sample = masked_reconstruction_loss(
            pred, target, mask, norm_pix_loss=self.config.norm_pix_loss, norm_pix_eps=self.config.norm_pix_eps
        )
        return RadFMMAEOutput(loss=loss, per_sample_loss=per_sample, predictions=pred, mask=mask,
                              keep_indices=keep_indices)


# So that AutoConfig / AutoModel find the MAE by its model_type (the encoder registers in radfm.models).
def _register() -> None:
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(RadFMMAEConfig.model_type, RadFMMAEConfig, exist_ok=True)
    AutoModel.register(RadFMMAEConfig, RadFMForMaskedVolumeModeling, exist_ok=True)


_register()
