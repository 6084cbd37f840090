"""The ViT encoder's feature pyramid: four maps at strides patch/4 … patch*2 for dense decoders.

The pyramid's layers are named ``up`` and ``lateral`` (not ``proj``/``fc``) so LoRA target names
meant for the trunk never catch them by accident.
"""

from __future__ import annotations

import torch
from torch import nn

from radfm.models.encoder_config import up_stage_factors
from radfm.models.vit_blocks import LayerNorm3d

__all__ = ["FeaturePyramid"]


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
