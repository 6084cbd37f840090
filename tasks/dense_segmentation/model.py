"""Dense segmentation over the shared encoder: a light FPN decoder and the encoder + head model.

Read top to bottom: the conv block, the head (:class:`DenseSegmentationHead`), its config
(:class:`RadFMDenseSegmentationConfig`), the model (:class:`RadFMForDenseSegmentation`) and
:func:`forward_logits`, the one call the training loop and the sliding window share.

Why this decoder: the encoder already hands over a multi-scale pyramid, so the head only has to
mix the levels (1×1 laterals, coarse-to-fine top-down sums as in FPN), sharpen at the finest level
(two 3×3×3 convs) and get back to voxel resolution. Which levels (:func:`encoder_levels`):

- ViT: the four-level ``feature_pyramid`` (strides patch/4, patch/2, patch, 2·patch, see
  ``RadFMEncoderConfig.pyramid_strides``). With a patch of 16 the finest map has a stride of 4
  voxels, and organ borders drawn by trilinear upsampling alone are blurred by about two voxels,
  so a tiny full-resolution image branch (UNETR's skip from the raw input, cut down to
  ``skip_channels`` maps) restores them.
- CNN (``architecture="cnn"``): every stage in ``feature_maps`` (strides 1, 2, 4, 8, 16), not only
  the four finest of ``feature_pyramid``: the deepest stage carries the most context, and LoRA on
  its convs would otherwise train nothing.

Every 3×3×3 conv runs on few channels (``channels`` at the finest level, ``fuse_channels`` at
full resolution), so the head costs less than the encoder on CPU.

The head is one submodule named ``head`` so that peft's ``modules_to_save=["head"]`` keeps a
per-adapter copy of it; its layer names (``lateral``, ``refine``, ``reduce``, ``skip``, ``fuse``,
``classifier``) never collide with the encoder's LoRA target names (``qkv``, ``proj``, ``fc1``,
``fc2``, ``stages.S.B.convK``). The model offers what ``radfm.adapters.lora`` needs to give each
adapter a head of its own size (``head_fields``, :meth:`~RadFMForDenseSegmentation.head_spec`,
:meth:`~RadFMForDenseSegmentation.build_head`), so the adapters package never imports a task.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from radfm.errors import ConfigError, InputError
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig

__all__ = [
    "ConvNormAct3d",
    "DenseSegmentationHead",
    "DenseSegmentationOutput",
    "RadFMDenseSegmentationConfig",
    "RadFMForDenseSegmentation",
    "autocast",
    "base_model",
    "encoder_levels",
    "forward_logits",
    "head_spec",
]

#: Fields of the config that define the head (stored with adapters so a head can be rebuilt).
HEAD_FIELDS: tuple[str, ...] = ("num_classes", "head_channels", "fuse_channels", "skip_channels")


class ConvNormAct3d(nn.Sequential):
    """3×3×3 conv → GroupNorm → GELU, ``(B, C_in, D, H, W)`` → ``(B, C_out, D, H, W)``.

    GroupNorm instead of BatchNorm: few-shot batches hold 1–2 patches, where batch statistics
    are noise.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.GELU(),
        )


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels`` (GroupNorm needs a divisor)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def encoder_levels(config: RadFMEncoderConfig) -> list[int]:
    """Channels of the encoder maps the head reads, finest first (see the module docstring).

    ViT: ``pyramid_channels`` (four levels); CNN: ``cnn_channels`` (every stage, strides 1 … 2**(S-1)).
    """
    if getattr(config, "architecture", "vit") == "cnn":
        return [int(c) for c in config.cnn_channels]
    return [int(c) for c in config.pyramid_channels]


class DenseSegmentationHead(nn.Module):
    """FPN-lite decoder: encoder maps, finest first (+ the input image) → per-voxel class logits.

    Steps (``C`` = ``channels``, ``F`` = ``fuse_channels``, ``S`` = ``skip_channels``):

    1. ``lateral[i]``: 1×1 conv of pyramid level ``i`` to ``C`` channels;
    2. top-down: from the coarsest level, upsample (trilinear) to the next finer level and add;
    3. ``refine``: two 3×3×3 ConvNormAct at the finest level (stride patch/4);
    4. ``reduce``: 1×1 conv to ``F``, trilinear upsampling to the input size;
    5. with ``S > 0``: ``skip`` (3×3×3 ConvNormAct of the image to ``S`` maps) is concatenated
       and ``fuse`` (3×3×3 ConvNormAct, ``F + S`` → ``F``) mixes them at full resolution;
    6. ``classifier``: 1×1 conv to ``num_classes`` logits.

    Args:
        in_channels: channels of the encoder maps, finest first (:func:`encoder_levels`).
        image_channels: channels of the model input (for the skip branch).
        num_classes: output classes, background included (softmax over them).
        channels: ``C``; fuse_channels: ``F``; skip_channels: ``S`` (0 disables the image branch).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        image_channels: int = 1,
        num_classes: int,
        channels: int = 32,
        fuse_channels: int = 16,
        skip_channels: int = 8,
    ) -> None:
        super().__init__()
        if num_classes < 1 or channels < 1 or fuse_channels < 1 or skip_channels < 0:
            raise ConfigError(
                f"head sizes must be positive (num_classes={num_classes}, channels={channels}, "
                f"fuse_channels={fuse_channels}, skip_channels={skip_channels} >= 0)."
            )
        self.lateral = nn.ModuleList(nn.Conv3d(c, channels, kernel_size=1) for c in in_channels)
        self.refine = nn.Sequential(ConvNormAct3d(channels, channels), ConvNormAct3d(channels, channels))
        self.reduce = nn.Conv3d(channels, fuse_channels, kernel_size=1)
        self.skip = ConvNormAct3d(image_channels, skip_channels) if skip_channels else None
        self.fuse = ConvNormAct3d(fuse_channels + skip_channels, fuse_channels) if skip_channels else None
        self.classifier = nn.Conv3d(fuse_channels, num_classes, kernel_size=1)

    def forward(self, pyramid: Sequence[torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
        """``pyramid``: ``(B, c_i, …)`` maps, finest first; ``pixel_values``: ``(B, C, D, H, W)``.

        Returns ``(B, num_classes, D, H, W)`` logits on the grid of ``pixel_values``.
        """
        x = self.lateral[-1](pyramid[-1])
        for level in range(len(pyramid) - 2, -1, -1):
            lat = self.lateral[level](pyramid[level])
            x = lat + F.interpolate(x, size=lat.shape[2:], mode="trilinear", align_corners=False)
        x = self.reduce(self.refine(x))
        size = pixel_values.shape[2:]
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        if self.skip is not None:
            skip = self.skip(pixel_values.to(x.dtype))
            x = self.fuse(torch.cat([x, skip.to(x.dtype)], dim=1))
        return self.classifier(x)


@strict
class RadFMDenseSegmentationConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMForDenseSegmentation`: the encoder's config plus the head's sizes.

    Args:
        encoder_config: a :class:`RadFMEncoderConfig` (or its dict); default the "small" preset.
        num_classes: output classes, background (index 0) included.
        head_channels, fuse_channels, skip_channels: sizes of :class:`DenseSegmentationHead`.
        id2label: ``{index: name}``; default ``{0: "background", 1: "class_1", …}``.
    """

    model_type = "radfm_dense_segmentation"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=RadFMEncoderConfig),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    num_classes: int = 2
    head_channels: int = 32
    fuse_channels: int = 16
    skip_channels: int = 8

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}.")
        names = {int(k): str(v) for k, v in (self.id2label or {}).items()}
        if sorted(names) != list(range(self.num_classes)):
            names = {0: "background", **{i: f"class_{i}" for i in range(1, self.num_classes)}}
        self.id2label = names
        self.label2id = {v: k for k, v in names.items()}


def head_spec(config: RadFMDenseSegmentationConfig) -> dict[str, int]:
    """The head's sizes as a plain dict (``HEAD_FIELDS``), e.g. for an adapter's metadata."""
    return {k: int(getattr(config, k)) for k in HEAD_FIELDS}


@dataclass
class DenseSegmentationOutput(ModelOutput):
    """Output of :class:`RadFMForDenseSegmentation`.

    Args:
        logits: ``(B, num_classes, D, H, W)`` on the input's grid (unnormalised; softmax over dim 1).
    """

    logits: torch.Tensor | None = None


class RadFMForDenseSegmentation(PreTrainedModel):
    """Shared encoder + :class:`DenseSegmentationHead`: ``(B, C, D, H, W)`` → ``(B, K, D, H, W)`` logits.

    Build it around a (pretrained) encoder with :meth:`from_encoder`; ``save_pretrained`` /
    ``from_pretrained`` store both parts (config + safetensors). For LoRA the encoder is the
    part peft adapts and ``head`` the module it saves whole (see ``radfm.adapters.lora``).
    Works on a ViT or a CNN encoder (:func:`encoder_levels`).
    """

    config_class = RadFMDenseSegmentationConfig
    base_model_prefix = "radfm_seg"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: RadFMDenseSegmentationConfig) -> None:
        super().__init__(config)
        enc = config.encoder_config
        self.encoder = RadFMEncoder(enc)
        self.head = self.build_head(head_spec(config))
        self.post_init()

    #: The config fields that size the head (recorded with adapters; see ``radfm.adapters.lora``).
    head_fields: ClassVar[tuple[str, ...]] = HEAD_FIELDS

    def head_spec(self) -> dict[str, int]:
        """This model's head sizes (``head_fields``) as a plain dict."""
        return head_spec(self.config)

    def build_head(self, spec: Mapping[str, int]) -> DenseSegmentationHead:
        """A fresh head with the sizes in ``spec`` (``head_fields``) for this model's encoder.

        Why a method: peft copies the base head for every adapter; an adapter for another task
        (other classes) needs a head of its own size, built here, where the encoder's levels are known.
        """
        enc = self.config.encoder_config
        return DenseSegmentationHead(
            in_channels=encoder_levels(enc),
            image_channels=enc.in_channels,
            num_classes=int(spec["num_classes"]),
            channels=int(spec["head_channels"]),
            fuse_channels=int(spec["fuse_channels"]),
            skip_channels=int(spec["skip_channels"]),
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Head init (the encoder, a PreTrainedModel, initialises itself): Kaiming convs, unit norms."""
        if isinstance(module, nn.Conv3d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_encoder(
        cls,
        encoder: RadFMEncoder,
        num_classes: int,
        *,
        id2label: dict[int, str] | None = None,
        head_channels: int = 32,
        fuse_channels: int = 16,
        skip_channels: int = 8,
    ) -> RadFMForDenseSegmentation:
        """A model whose encoder holds a copy of ``encoder``'s weights and whose head is new.

        Why a copy: the caller's encoder stays untouched whatever is trained afterwards.
        """
        config = RadFMDenseSegmentationConfig(
            encoder_config=copy.deepcopy(encoder.config),
            num_classes=num_classes,
            head_channels=head_channels,
            fuse_channels=fuse_channels,
            skip_channels=skip_channels,
            id2label=id2label,
        )
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        p = next(encoder.parameters())
        return model.to(device=p.device, dtype=p.dtype)

    def forward(
        self, pixel_values: torch.Tensor, *, modality_ids: torch.Tensor | None = None
    ) -> DenseSegmentationOutput:
        """Segment a batch.

        Args:
            pixel_values: ``(B, C, D, H, W)`` normalised intensities (any size: padded internally to a
                multiple of the encoder's patch at the far end, the logits cropped back).
            modality_ids: ``(B,)`` long (CT=0, MR=1, other=2) or ``None``.
        Returns:
            :class:`DenseSegmentationOutput` with ``logits`` ``(B, num_classes, D, H, W)``.
        """
        if pixel_values.ndim != 5:
            raise InputError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(pixel_values.shape)}.")
        d, h, w = pixel_values.shape[2:]
        pad = [(-s) % p for s, p in zip((d, h, w), self.config.encoder_config.patch_size)]
        x = pixel_values
        if any(pad):  # replicate, not zeros: zero is not "background" under every normalisation
            x = F.pad(pixel_values, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        out = self.encoder(x, modality_ids=modality_ids)
        levels = out.feature_maps if getattr(self.config.encoder_config, "architecture", "vit") == "cnn" \
            else out.feature_pyramid
        logits = self.head(levels, x)
        return DenseSegmentationOutput(logits=logits[:, :, :d, :h, :w])


def base_model(model: nn.Module) -> RadFMForDenseSegmentation | None:
    """The :class:`RadFMForDenseSegmentation` inside ``model`` (itself or a PeftModel's base), else ``None``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if isinstance(base, RadFMForDenseSegmentation) else None


def forward_logits(model: nn.Module, x: torch.Tensor, modality_id: int | None) -> torch.Tensor:
    """Logits ``(B, K, D, H, W)`` of a radfm model (with modality ids) or of any plain segmenter.

    Why one function: training (``fit``) and inference (the sliding window) must call the model
    the same way, and outside baselines (a MONAI UNet in ``radfm bench fewshot``) take no modality.
    """
    if base_model(model) is not None:
        mids = None if modality_id is None else torch.full((x.shape[0],), modality_id, dtype=torch.long,
                                                           device=x.device)
        return model(x, modality_ids=mids).logits
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on ``device``'s type when ``enabled`` (CPU too), else a no-op."""
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# So that AutoConfig / AutoModel find the model by its model_type (as the encoder is in radfm.models).
AutoConfig.register(RadFMDenseSegmentationConfig.model_type, RadFMDenseSegmentationConfig, exist_ok=True)
AutoModel.register(RadFMDenseSegmentationConfig, RadFMForDenseSegmentation, exist_ok=True)
