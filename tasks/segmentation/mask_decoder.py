"""Mask decoder: prompt tokens × image tokens → candidate masks at full input resolution + IoU.

segment-anything's ``MaskDecoder`` in 3D. The two-way transformer is SAM's own
``TwoWayTransformer``: it works on flattened tokens, so the 3D token grid ``(gd, gh, gw)`` is
handed to it as a ``(gd·gh·gw, 1)`` "image". What SAM does in 2D with two fixed ×2 transposed
convs is replaced by a path that walks down the encoder's feature pyramid:

====================  =====================================  ============================
stage                 op                                     stride (voxels)
====================  =====================================  ============================
tokens                transformer output                     patch
up[0]                 ConvT → + lateral(pyramid level 1)     patch/2 (pyramid_strides[1])
up[1]                 ConvT → + lateral(pyramid level 0)     patch/4 (pyramid_strides[0])
up[2]                 ConvT → + image branch (3×3×3 conv)    1 (full input resolution)
====================  =====================================  ============================

each followed by a channel LayerNorm and GELU (the last by GELU only, as SAM's). Why fuse the pyramid and an image skip: a patch of
8–16 voxels cannot place an organ border by itself, while the finer pyramid maps and a cheap
full-resolution image branch carry the edges. The image skip depends on the image only, so the
predictor computes them once with the embedding (:meth:`MaskDecoder3d.image_skips`); a click then
costs the transformer, three transposed convs (as matrix products, channels-last) and one dot
product per voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

from radfm.tasks.segmentation.prompt_encoder import NUM_PROMPT_MAPS

__all__ = ["MaskDecoder3d", "TwoWayTransformer"]


def _factor(fine: Sequence[int], coarse: Sequence[int]) -> tuple[int, int, int]:
    """Per-axis upsampling factor from stride ``coarse`` to stride ``fine`` (an integer ≥ 1)."""
    return tuple(max(int(c) // max(int(f), 1), 1) for f, c in zip(fine, coarse))  # type: ignore[return-value]


def conv_transpose_cl(x: torch.Tensor, conv: nn.ConvTranspose3d) -> torch.Tensor:
    """``ConvTranspose3d`` with kernel = stride on a channels-last map, as one matrix product.

    ``(B, d, h, w, C_in)`` → ``(B, fd·d, fh·h, fw·w, C_out)``. Why: with non-overlapping kernels the
    transposed conv is ``x @ W`` followed by a pixel shuffle, and a matrix product on the CPU is
    several times faster than oneDNN's transposed 3D conv with few channels (this runs per click).
    Exactly ``conv`` (same weights, same result up to float rounding).
    """
    fd, fh, fw = conv.kernel_size
    b, d, h, w, cin = x.shape
    cout = conv.out_channels
    y = x.reshape(-1, cin) @ conv.weight.reshape(cin, cout * fd * fh * fw).to(x.dtype)
    y = y.reshape(b, d, h, w, cout, fd, fh, fw).permute(0, 1, 5, 2, 6, 3, 7, 4)
    y = y.reshape(b, d * fd, h * fh, w * fw, cout)
    return y + conv.bias.to(y.dtype) if conv.bias is not None else y


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` → contiguous ``(B, D, H, W, C)``."""
    return x.permute(0, 2, 3, 4, 1).contiguous()


class _UpStage(nn.Module):
    """Transposed conv (kernel = stride = factor) + a same-resolution skip → LayerNorm → GELU.

    Works channels-last; the skip arrives already projected to ``out_channels`` (cached per image).
    The last stage, at full resolution, has no norm (SAM's output upscaling ends the same way).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: Sequence[int], *, norm: bool = True) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=tuple(factor), stride=tuple(factor))
        self.norm = nn.LayerNorm(out_channels) if norm else None
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = conv_transpose_cl(x, self.up)
        if skip is not None:
            if skip.shape[1:4] != x.shape[1:4]:  # ceil-mode pyramid maps of odd grids
                skip = F.interpolate(skip.permute(0, 4, 1, 2, 3), size=x.shape[1:4], mode="trilinear",
                                     align_corners=False).permute(0, 2, 3, 4, 1)
            x = x + skip.to(x.dtype)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class MaskDecoder3d(nn.Module):
    """Predicts ``num_multimask_outputs`` candidate masks (+ one single-prompt mask) and their IoU.

    Args:
        transformer_dim: token width ``C``.
        transformer: a :class:`TwoWayTransformer` of width ``C``.
        pyramid_channels: channels of the encoder's four pyramid maps, finest first.
        pyramid_strides: their strides ``(sd, sh, sw)``, finest first (``config.pyramid_strides``).
        image_channels: channels of the model input (for the full-resolution skip).
        num_multimask_outputs: candidate masks for ambiguous prompts (SAM: 3).
        iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        pyramid_channels: Sequence[int],
        pyramid_strides: Sequence[Sequence[int]],
        image_channels: int = 1,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        s0, s1, s2 = (tuple(int(v) for v in s) for s in pyramid_strides[:3])
        widths = [c, max(c // 2, 4), max(c // 4, 4), max(c // 8, 4)]
        self.out_channels = widths[-1]
        self.upscaling = nn.ModuleList([
            _UpStage(widths[0], widths[1], _factor(s1, s2)),
            _UpStage(widths[1], widths[2], _factor(s0, s1)),
            _UpStage(widths[2], widths[3], _factor((1, 1, 1), s0), norm=False),
        ])
        # Image-only projections of the skips (cached with the embedding): 1×1 laterals of pyramid
        # levels 1 and 0, and a full-resolution image branch (3×3×3 conv, GELU, 1×1; few channels).
        self.lateral = nn.ModuleList([nn.Linear(pyramid_channels[1], widths[1]),
                                      nn.Linear(pyramid_channels[0], widths[2])])
        self.image_conv = nn.Conv3d(image_channels, widths[3], kernel_size=3, padding=1)
        self.image_proj = nn.Linear(widths[3], widths[3])
        # The mask tokens read the full-resolution features plus the rendered prompt maps (clicks, box).
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, widths[3] + NUM_PROMPT_MAPS, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def image_skips(self, pyramid: Sequence[torch.Tensor], pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The image-only inputs of the three up-stages, channels-last (computed once per image).

        Returns ``(lateral(level 1) (B, 2gd, 2gh, 2gw, C/2), lateral(level 0) (B, 4gd, …, C/4),
        image branch (B, D, H, W, C/8))`` (nominal strides for a patch halvable twice).
        """
        dtype = self.image_conv.weight.dtype
        img = channels_last(F.gelu(self.image_conv(pixel_values.to(dtype))))
        return (self.lateral[0](channels_last(pyramid[1])), self.lateral[1](channels_last(pyramid[0])),
                self.image_proj(img))

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        skips: Sequence[torch.Tensor],
        prompt_maps: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for one prompt set per batch item.

        Args:
            image_embeddings: ``(Bi, C, gd, gh, gw)``; ``Bi`` = 1 (one image, many prompt sets) or ``B``.
            image_pe: ``(1, C, gd, gh, gw)`` positional code of the tokens.
            sparse_prompt_embeddings: ``(B, T, C)``.
            dense_prompt_embeddings: ``(B, C, gd, gh, gw)``.
            skips: the three channels-last maps of :meth:`image_skips` (batch ``Bi``).
            prompt_maps: ``(B, 3, D, H, W)`` clicks/box at full resolution (``render_prompt_maps``).
            multimask_output: return the ``num_multimask_outputs`` candidates (ambiguous prompt, e.g.
                one click) instead of the single-mask token (several clicks, a box).
        Returns:
            ``(masks (B, M, D, H, W) logits, iou_pred (B, M))`` with ``M`` = 3 or 1.
        """
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1).to(sparse_prompt_embeddings.dtype),
                            sparse_prompt_embeddings], dim=1)

        def per_prompt(x: torch.Tensor) -> torch.Tensor:
            return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x

        src = per_prompt(image_embeddings) + dense_prompt_embeddings
        pos = image_pe.expand(b, *image_pe.shape[1:])
        _, c, gd, gh, gw = src.shape
        # The transformer flattens (B, C, h, w); a 3D grid goes in as an (N, 1) image.
        hs, src = self.transformer(src.reshape(b, c, gd * gh * gw, 1), pos.reshape(b, c, -1, 1), tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        x = src.reshape(b, gd, gh, gw, c)  # the transformer returns (B, N, C), N z-major: channels-last
        for stage, skip in zip(self.upscaling, skips):
            x = stage(x, per_prompt(skip))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, num_mask_tokens, c_out)
        d, h, w = x.shape[1:4]
        c_img = x.shape[4]
        hyper_in = hyper_in.to(x.dtype)
        # mask = hyper · [features, prompt maps]; the two parts are summed rather than concatenated so
        # that no full-resolution copy is made (this runs per click).
        masks = (x.reshape(b, d * h * w, c_img) @ hyper_in[:, :, :c_img].transpose(1, 2)).transpose(1, 2)
        masks = masks + hyper_in[:, :, c_img:] @ prompt_maps.to(x.dtype).reshape(b, -1, d * h * w)
        masks = masks.reshape(b, -1, d, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]
