"""The shared 3D encoder: a plain ViT over 3D patches plus a feature pyramid for dense decoders.

Read top to bottom: input helpers, the building blocks (patch embedding, attention, MLP, block),
the feature pyramid, the model, then the channel-expansion helper.

Shapes: volumes are ``(B, C, D, H, W)``; the token grid is ``(gd, gh, gw) = (D/pd, H/ph, W/pw)``
and tokens are flattened z-major, ``N = gd * gh * gw`` (token ``n`` sits at
``z = n // (gh*gw)``, ``y = (n // gw) % gh``, ``x = n % gw``).

LoRA target names (peft ``target_modules``): ``qkv`` and ``proj`` (attention), ``fc1`` and
``fc2`` (MLP), ``patch_embed.proj`` (the Conv3d). peft matches names by suffix, so a bare
``"proj"`` also catches ``patch_embed.proj``; use ``"attn.proj"`` to mean attention only. The
pyramid's layers are named differently (``up``, ``lateral``) so they are never caught by accident.
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
from radfm.models.cnn import ConvTrunk3d
from radfm.models.encoder_config import RadFMEncoderConfig, up_stage_factors
from radfm.models.pos_embed import interpolate_pos_table, sincos_pos_embed_3d

__all__ = [
    "Attention",
    "Block",
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


# ----------------------------------------------------------------------------- input helpers
def pad_to_patch_multiple(
    x: torch.Tensor, patch_size: tuple[int, int, int], *, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad ``(B, C, D, H, W)`` at the far end of each axis up to a multiple of ``patch_size``.

    Why the far end: voxel indices of the original volume stay valid in the padded one, so
    prompts and outputs need no shift; crop back with ``y[..., :D, :H, :W]``. Pass ``value`` =
    the background of the normalised image (e.g. the value of air for CT), not always 0.

    Returns:
        ``(x_padded, (pad_d, pad_h, pad_w))`` with the number of voxels added per axis.
    """
    if x.ndim != 5:
        raise InputError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}.")
    pad = tuple((-s) % p for s, p in zip(x.shape[2:], patch_size))
    if any(pad):
        # F.pad lists the last axis first: (w_lo, w_hi, h_lo, h_hi, d_lo, d_hi).
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="constant", value=value)
    return x, pad  # type: ignore[return-value]


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    *,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random token subsets of equal size per sample for MAE-style encoding.

    Returns:
        ``(B, N_keep)`` long, sorted ascending, ``N_keep = round(N * (1 - mask_ratio))`` (>= 1).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    n_keep = max(1, round(num_tokens * (1.0 - mask_ratio)))
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values


def _check_input(x: torch.Tensor, *, in_channels: int, patch_size: tuple[int, int, int]) -> None:
    if x.ndim != 5:
        raise InputError(
            f"the encoder expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}.",
            "Add the batch/channel axes, e.g. x[None, None] for a single (D, H, W) volume.",
        )
    if x.shape[1] != in_channels:
        raise InputError(
            f"the encoder was built for {in_channels} input channel(s), got shape {tuple(x.shape)}.",
            "Use radfm.models.expand_input_channels to adapt a single-channel model.",
        )
    if any(s % p for s, p in zip(x.shape[2:], patch_size)):
        raise InputError(
            f"input shape {tuple(x.shape)} is not a multiple of the patch size {tuple(patch_size)} "
            "along (D, H, W).",
            "Pad it first with radfm.models.pad_to_patch_multiple (or crop).",
        )


# ----------------------------------------------------------------------------- building blocks
class PatchEmbed3d(nn.Module):
    """Non-overlapping 3D patches -> tokens, one Conv3d with kernel = stride = patch size.

    ``(B, C, D, H, W)`` -> ``(B, hidden, gd, gh, gw)``.
    """

    def __init__(self, *, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention over all tokens. ``(B, N, hidden)`` -> ``(B, N, hidden)``.

    One fused ``qkv`` Linear and one ``proj`` Linear: the names LoRA targets. The kernel is
    ``F.scaled_dot_product_attention`` (flash/memory-efficient paths on CPU and GPU, bf16-ready).
    """

    def __init__(self, *, hidden_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Position-wise MLP ``fc1`` -> GELU -> ``fc2``. ``(B, N, hidden)`` -> ``(B, N, hidden)``."""

    def __init__(self, *, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block with stochastic depth. ``(B, N, hidden)`` -> same."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attn = Attention(hidden_size=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = Mlp(hidden_size=hidden_size, mlp_hidden=int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(B, C, D, H, W)`` maps (SAM's LayerNorm2d in 3D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


# ----------------------------------------------------------------------------- feature pyramid
class FeaturePyramid(nn.Module):
    """Four maps for dense decoders from four block outputs (UNETR-style sources, ViTDet-style ops).

    Level ``i`` takes the output of block ``out_indices[i]`` reshaped to ``(B, hidden, gd, gh, gw)``:

    ====  ========================================  ===============  =====================
    lvl   op                                        stride (voxels)  shape
    ====  ========================================  ===============  =====================
    0     ConvT x2 -> LN -> GELU -> ConvT x2        patch / 4        (B, c0, 4gd, 4gh, 4gw)
    1     ConvT x2                                  patch / 2        (B, c1, 2gd, 2gh, 2gw)
    2     identity                                  patch            (B, c2, gd, gh, gw)
    3     MaxPool 2 (ceil mode)                     patch * 2        (B, c3, ⌈gd/2⌉, …)
    ====  ========================================  ===============  =====================

    each followed by a 1x1x1 ``lateral`` conv to ``pyramid_channels[i]`` and a channel LayerNorm.
    Along an axis whose patch size cannot be halved the x2 stages keep that axis (kernel 1), see
    ``RadFMEncoderConfig.pyramid_strides``. Why this cheap design: transposed convs with kernel =
    stride touch each input voxel once, and no 3x3x3 conv runs at full resolution, so the
    pyramid costs a few percent of the trunk on CPU; decoders add their own convs where needed.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        patch_size: tuple[int, int, int],
        channels: list[int] | tuple[int, ...],
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        h = hidden_size
        h2, h4 = max(h // 2, 1), max(h // 4, 1)
        f1, f2 = up_stage_factors(patch_size)
        self.up = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose3d(h, h2, kernel_size=f1, stride=f1),
                    LayerNorm3d(h2, eps=layer_norm_eps),
                    nn.GELU(),
                    nn.ConvTranspose3d(h2, h4, kernel_size=f2, stride=f2),
                ),
                nn.ConvTranspose3d(h, h2, kernel_size=f1, stride=f1),
                nn.Identity(),
                nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True),
            ]
        )
        in_ch = [h4, h2, h, h]
        self.lateral = nn.ModuleList([nn.Conv3d(ci, co, kernel_size=1) for ci, co in zip(in_ch, channels)])
        self.norm = nn.ModuleList([LayerNorm3d(co, eps=layer_norm_eps) for co in channels])

    def forward(
        self, features: list[torch.Tensor], grid_size: tuple[int, int, int]
    ) -> tuple[torch.Tensor, ...]:
        """``features``: four ``(B, N, hidden)`` patch-token tensors -> four maps, finest first."""
        out = []
        for feat, up, lateral, norm in zip(features, self.up, self.lateral, self.norm):
            b, _, c = feat.shape
            x = feat.transpose(1, 2).reshape(b, c, *grid_size)
            out.append(norm(lateral(up(x))))
        return tuple(out)


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
        _check_input(pixel_values, in_channels=self.config.in_channels, patch_size=self.config.patch_size)
        # The residual stream keeps the parameters' dtype: under autocast the matmuls run in bf16
        # while the sums between blocks stay float32, which keeps bf16 close to fp32.
        dtype = self.norm.weight.dtype
        if not pixel_values.is_floating_point() or not torch.is_autocast_enabled(pixel_values.device.type):
            pixel_values = pixel_values.to(dtype)
        x = self.patch_embed(pixel_values)  # (B, hidden, gd, gh, gw)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).to(dtype)  # (B, N, hidden)
        x = x + self.position_embedding(grid, device=x.device, dtype=dtype)
        if modality_ids is not None:
            if self.modality_embed is None:
                raise ConfigError(
                    "modality_ids were given but this encoder has no modality embedding.",
                    "Build it with modality_embedding=True or pass modality_ids=None.",
                )
            modality_ids = torch.as_tensor(modality_ids, device=x.device).long().reshape(-1)
            if modality_ids.shape[0] != x.shape[0]:
                raise InputError(
                    f"modality_ids has shape {tuple(modality_ids.shape)}, expected ({x.shape[0]},)."
                )
            if int(modality_ids.min()) < 0 or int(modality_ids.max()) >= self.config.num_modalities:
                raise InputError(
                    f"modality_ids must be in [0, {self.config.num_modalities}), got {modality_ids.tolist()}."
                )
            x = x + self.modality_embed(modality_ids)[:, None, :].to(x.dtype)
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

    def _modality_vector(self, modality_ids: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
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
        _check_input(pixel_values, in_channels=self.config.in_channels, patch_size=self.config.patch_size)
        dtype = self.norm.weight.dtype
        if not pixel_values.is_floating_point() or not torch.is_autocast_enabled(pixel_values.device.type):
            pixel_values = pixel_values.to(dtype)
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


# ----------------------------------------------------------------------------- channel expansion
@torch.no_grad()
def expand_input_channels(model: RadFMEncoder, num_channels: int, *, mode: str = "average") -> RadFMEncoder:
    """Give a (pretrained) encoder ``num_channels`` input channels, in place; returns the model.

    Why: encoders are pretrained on single-channel CT/MR but fine-tuned on multi-sequence MR
    (T1, T2, FLAIR … stacked as channels). The old kernel is first summed over its channels (the
    kernel that acts on a volume copied into every channel), then

    - ``"average"``: each new channel gets that kernel / ``num_channels``, so a volume copied
      into all channels gives exactly the old tokens (activation scale is kept);
    - ``"repeat"``: each new channel gets the full kernel (outputs scale with the channel count).

    Call it before adding LoRA adapters; ``model.config.in_channels`` is updated, so
    ``save_pretrained`` writes a consistent checkpoint. Usage:
    ``expand_input_channels(RadFMEncoder.from_pretrained(ckpt), 3)``.
    """
    if num_channels < 1:
        raise ConfigError(f"num_channels must be >= 1, got {num_channels}.")
    if mode not in ("average", "repeat"):
        raise ConfigError(f"mode must be 'average' or 'repeat', got {mode!r}.")
    old = model.patch_embed.proj
    if not isinstance(old, nn.Conv3d):
        raise ConfigError(
            "patch_embed.proj is not a plain Conv3d (adapters already attached?).",
            "Expand the channels before wrapping the model with peft.",
        )
    kernel = old.weight.sum(dim=1, keepdim=True)  # (hidden, 1, pd, ph, pw)
    if mode == "average":
        kernel = kernel / num_channels
    new = nn.Conv3d(
        num_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.copy_(kernel.expand(-1, num_channels, -1, -1, -1))
    new.bias.copy_(old.bias)
    model.patch_embed.proj = new
    model.config.in_channels = num_channels
    return model
