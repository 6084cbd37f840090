"""The shared 3D encoder: a plain ViT over 3D patches (plus a feature pyramid) or a residual 3D CNN.

This file holds the output type and the model; its pieces live beside it: input helpers in
``encoder_input``, the ViT blocks in ``vit_blocks``, the pyramid in ``feature_pyramid``, the CNN
trunk in ``cnn``, channel expansion in ``channels`` (all re-exported here).

Shapes: volumes are ``(B, C, D, H, W)``; the token grid is ``(gd, gh, gw) = (D/pd, H/ph, W/pw)``
and tokens are flattened z-major, ``N = gd * gh * gw`` (token ``n`` sits at
``z = n // (gh*gw)``, ``y = (n // gw) % gh``, ``x = n % gw``).

LoRA target names (peft ``target_modules``): ``qkv`` and ``proj`` (attention), ``fc1`` and
``fc2`` (MLP), ``patch_embed.proj`` (the Conv3d). peft matches names by suffix, so a bare
``"proj"`` also catches ``patch_embed.proj``; use ``"attn.proj"`` to mean attention only. The
pyramid's layers are named differently (``up``, ``lateral``) so they are never caught by accident.
CNN trunk targets: see ``radfm.models.cnn``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from radfm.errors import ConfigError, InputError
from radfm.models.channels import expand_input_channels
from radfm.models.cnn import ConvTrunk3d
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.models.encoder_input import check_input, pad_to_patch_multiple, random_keep_indices
from radfm.models.feature_pyramid import FeaturePyramid
from radfm.models.pos_embed import interpolate_pos_table, sincos_pos_embed_3d
from radfm.models.vit_blocks import Attention, Block, DropPath, LayerNorm3d, Mlp, PatchEmbed3d

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "FeaturePyramid",
    "LayerNorm3d",
    "Mlp",
    "PatchEmbed3d",
    "RadFMEncoder",
    "RadFMEncoderOutput",
    "expand_input_channels",
    "pad_to_patch_multiple",
    "random_keep_indices",
]


# ----------------------------------------------------------------------------- the model
@dataclass
class RadFMEncoderOutput(ModelOutput):
    """Output of :class:`RadFMEncoder`.

    Args:
        last_hidden_state: ``(B, P + N, hidden)`` after the final LayerNorm; ``P`` = 1 with a class
            token (first), else 0; ``N`` = all tokens, or ``N_keep`` when ``keep_indices`` was given.
        grid_size: token grid ``(gd, gh, gw)`` of the full input (also with ``keep_indices``).
        hidden_states: outputs of the blocks in ``config.out_indices``, each ``(B, P + N, hidden)``
            (before the final norm).
        feature_pyramid: four ``(B, c_i, …)`` maps, finest first (see :class:`FeaturePyramid`), or
            ``None`` when ``output_pyramid=False`` or ``keep_indices`` was given.
        feature_maps: CNN trunks only: every stage's map, finest first (strides 1, 2, 4, …), the
            inputs of U-shaped decoders.
    """

    last_hidden_state: torch.Tensor | None = None
    grid_size: tuple[int, int, int] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    feature_pyramid: tuple[torch.Tensor, ...] | None = None
    feature_maps: tuple[torch.Tensor, ...] | None = None


class RadFMEncoder(PreTrainedModel):
    """Shared 3D ViT encoder for CT and MRI (MAE-pretrained, LoRA-adapted per task).

    Tokens = Conv3d patches + fixed 3D sin-cos position (+ optional learned table) + optional
    modality vector, then ``num_layers`` pre-LN blocks, a final LayerNorm and, for dense tasks,
    a four-level feature pyramid. Works for any input whose ``(D, H, W)`` are multiples of the
    patch size; the grid may change from call to call.
    """

    config_class = RadFMEncoderConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: RadFMEncoderConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        if config.architecture == "cnn":
            self._build_cnn(config)
            self.post_init()
            return
        self.patch_embed = PatchEmbed3d(
            in_channels=config.in_channels, hidden_size=h, patch_size=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h)) if config.use_cls_token else None
        self.modality_embed = nn.Embedding(config.num_modalities, h) if config.modality_embedding else None
        self.pos_table = (
            nn.Parameter(torch.zeros(1, h, *config.pos_embed_ref_grid)) if config.learned_pos_embed else None
        )
        n = config.num_layers  # drop-path rate grows linearly from 0 (first block) to the config's rate
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.blocks = nn.ModuleList(
            Block(
                hidden_size=h,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                drop_path=rates[i],
                layer_norm_eps=config.layer_norm_eps,
            )
            for i in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.pyramid = FeaturePyramid(
            hidden_size=h,
            patch_size=config.patch_size,
            channels=config.pyramid_channels,
            layer_norm_eps=config.layer_norm_eps,
        )
        self.gradient_checkpointing = False
        self.post_init()

    def _build_cnn(self, config: RadFMEncoderConfig) -> None:
        chans = list(config.cnn_channels)
        self.trunk = ConvTrunk3d(in_channels=config.in_channels, channels=chans, blocks=config.cnn_blocks)
        self.cls_token, self.pos_table = None, None
        self.modality_embed = nn.Embedding(config.num_modalities, chans[0]) if config.modality_embedding else None
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    @property
    def is_cnn(self) -> bool:
        return self.config.architecture == "cnn"

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in ``last_hidden_state`` (1 with a class token, else 0)."""
        return 1 if self.cls_token is not None else 0

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE initialisation; goes through ``transformers.initialization`` so loaded weights stay."""
        if isinstance(module, PatchEmbed3d):
            # MAE: xavier-uniform of the kernel seen as a (hidden, C*pd*ph*pw) matrix.
            w = module.proj.weight
            bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0]))
            init.uniform_(w, -bound, bound)
            init.zeros_(module.proj.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            # The patch-embedding conv is initialised by the PatchEmbed3d branch (visited after it).
            if module is not getattr(getattr(self, "patch_embed", None), "proj", None):
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.InstanceNorm3d)):  # includes LayerNorm3d
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Zero: a fresh modality embedding changes nothing until training gives it a reason.
            init.zeros_(module.weight)
        elif isinstance(module, RadFMEncoder):
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=self.config.initializer_range)
            if module.pos_table is not None:
                init.zeros_(module.pos_table)  # starts as pure sin-cos

    # --- pieces of the forward ----------------------------------------------------------------
    def position_embedding(
        self, grid_size: tuple[int, int, int], *, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """``(N, hidden)`` positional code of a grid: sin-cos (+ the resampled learned table)."""
        pos = sincos_pos_embed_3d(grid_size, self.config.hidden_size, device=device, dtype=dtype)
        if self.pos_table is not None:
            pos = pos + interpolate_pos_table(self.pos_table, grid_size).to(dtype)
        return pos

    def embed(
        self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patch tokens with position and modality added (no class token).

        Args:
            pixel_values: ``(B, C, D, H, W)``, ``(D, H, W)`` multiples of ``config.patch_size``.
            modality_ids: ``(B,)`` long (``MODALITY_IDS``) or ``None`` (no modality vector added).
        Returns:
            ``(tokens (B, N, hidden), (gd, gh, gw))``.
        """
        pixel_values, dtype = self._checked_input(pixel_values)
        x = self.patch_embed(pixel_values)  # (B, hidden, gd, gh, gw)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).to(dtype)  # (B, N, hidden)
        x = x + self.position_embedding(grid, device=x.device, dtype=dtype)
        vector = self._modality_vector(modality_ids, x.shape[0], x.device)
        if vector is not None:
            x = x + vector[:, None, :].to(x.dtype)
        return x, grid  # type: ignore[return-value]

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        modality_ids: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        output_pyramid: bool = True,
    ) -> RadFMEncoderOutput:
        """Encode a batch of volumes.

        Args:
            pixel_values: ``(B, C, D, H, W)`` normalised intensities; ``(D, H, W)`` multiples of
                ``config.patch_size`` (see :func:`pad_to_patch_multiple`).
            modality_ids: ``(B,)`` long, CT=0, MR=1, other=2, or ``None`` to add no modality vector.
            keep_indices: ``(B, N_keep)`` long indices (z-major, into the full grid) of the tokens
                to encode, the same count per sample (MAE); only those go through the blocks and
                no pyramid is built (see :func:`random_keep_indices`).
            output_pyramid: build ``feature_pyramid`` (ignored when ``keep_indices`` is given).
        Returns:
            :class:`RadFMEncoderOutput`.
        """
        if self.is_cnn:
            if keep_indices is not None:
                raise ConfigError("keep_indices (MAE token dropping) needs a ViT encoder; this one is a CNN.",
                                  "Mask the input instead (radfm.training.inpaint).")
            return self._forward_cnn(pixel_values, modality_ids)
        x, grid = self.embed(pixel_values, modality_ids)
        if keep_indices is not None:
            x = self._gather_kept(x, keep_indices)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

        wanted = set(self.config.out_indices)
        kept: dict[int, torch.Tensor] = {}
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            # Non-reentrant checkpointing (transformers' default) restores the RNG, so DropPath
            # drops the same samples when the block is recomputed in the backward pass.
            x = self._gradient_checkpointing_func(block.__call__, x) if checkpointing else block(x)
            if i in wanted:
                kept[i] = x
        hidden_states = tuple(kept[i] for i in self.config.out_indices)

        pyramid = None
        if output_pyramid and keep_indices is None:
            p = self.num_prefix_tokens
            pyramid = self.pyramid([h[:, p:] for h in hidden_states], grid)
        return RadFMEncoderOutput(
            last_hidden_state=self.norm(x),
            grid_size=grid,
            hidden_states=hidden_states,
            feature_pyramid=pyramid,
        )

    def _checked_input(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """Check the shape; return the input in the parameters' dtype (kept as is under autocast) and that dtype.

        The residual stream keeps the parameters' dtype: under autocast the matmuls run in bf16
        while the sums between blocks stay float32, which keeps bf16 close to fp32.
        """
        check_input(pixel_values, in_channels=self.config.in_channels, patch_size=self.config.patch_size)
        dtype = self.norm.weight.dtype
        if not pixel_values.is_floating_point() or not torch.is_autocast_enabled(pixel_values.device.type):
            pixel_values = pixel_values.to(dtype)
        return pixel_values, dtype

    def _modality_vector(self, modality_ids: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """``(B, hidden)`` modality vectors, or ``None`` without ids; bad ids raise errors that name them."""
        if modality_ids is None:
            return None
        if self.modality_embed is None:
            raise ConfigError(
                "modality_ids were given but this encoder has no modality embedding.",
                "Build it with modality_embedding=True or pass modality_ids=None.",
            )
        modality_ids = torch.as_tensor(modality_ids, device=device).long().reshape(-1)
        if modality_ids.shape[0] != batch:
            raise InputError(f"modality_ids has shape {tuple(modality_ids.shape)}, expected ({batch},).")
        if int(modality_ids.min()) < 0 or int(modality_ids.max()) >= self.config.num_modalities:
            raise InputError(
                f"modality_ids must be in [0, {self.config.num_modalities}), got {modality_ids.tolist()}."
            )
        return self.modality_embed(modality_ids)

    def _forward_cnn(self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None) -> RadFMEncoderOutput:
        pixel_values, dtype = self._checked_input(pixel_values)
        bias = self._modality_vector(modality_ids, pixel_values.shape[0], pixel_values.device)
        stride = self.config.patch_size[2]
        width = pixel_values.shape[-1]
        single = all(s == p for s, p in zip(pixel_values.shape[2:], self.config.patch_size))
        if single:  # instance norm needs > 1 voxel at the deepest stage: pad W, crop the maps back
            pixel_values = F.pad(pixel_values, (0, stride, 0, 0, 0, 0), mode="replicate")
        feats = self.trunk(pixel_values, bias)
        if single:
            feats = [f[..., : max(1, width * f.shape[-1] // (2 * width))] for f in feats]
        deep = feats[-1]
        grid = tuple(deep.shape[2:])
        tokens = deep.flatten(2).transpose(1, 2)
        return RadFMEncoderOutput(
            last_hidden_state=self.norm(tokens.to(dtype)),
            grid_size=grid,  # type: ignore[arg-type]
            hidden_states=(tokens,),
            feature_pyramid=tuple(feats[:4]),
            feature_maps=tuple(feats),
        )

    @staticmethod
    def _gather_kept(x: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden)``, ``(B, N_keep)`` -> ``(B, N_keep, hidden)``."""
        b, n, c = x.shape
        if keep_indices.ndim != 2 or keep_indices.shape[0] != b or keep_indices.shape[1] < 1:
            raise InputError(
                f"keep_indices must be (B={b}, N_keep >= 1) long indices, got shape {tuple(keep_indices.shape)}."
            )
        if keep_indices.dtype in (torch.bool, torch.uint8) or keep_indices.is_floating_point():
            raise InputError(f"keep_indices must hold integer token indices, got dtype {keep_indices.dtype}.")
        keep_indices = keep_indices.to(device=x.device, dtype=torch.long)
        if int(keep_indices.min()) < 0 or int(keep_indices.max()) >= n:
            raise InputError(f"keep_indices must lie in [0, {n}) for this input's {n} tokens.")
        return torch.gather(x, 1, keep_indices[:, :, None].expand(-1, -1, c))

    def get_volume_features(
        self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token features for the report bridge: ``(B, C, D, H, W)`` -> ``(B, P + N, hidden)``.

        Like transformers' ``get_image_features``: the final-normed tokens, no pyramid built.
        """
        return self.forward(pixel_values, modality_ids=modality_ids, output_pyramid=False).last_hidden_state
