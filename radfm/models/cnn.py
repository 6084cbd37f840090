"""Residual 3D CNN trunk of the shared encoder (``RadFMEncoderConfig(architecture="cnn")``).

Why a CNN beside the ViT: on this class of machine (CPU, few cores) a ViT on 8³ patches at 2–3 mm
gives 16–24 mm tokens and its feature pyramid is up-sampled from them, so nothing finer than a
token reaches a decoder; organ borders and small lesions are lost. A residual U-Net-style encoder
(nnU-Net's "ResEnc" family) keeps features at every stride from 1 to 16 voxels for the same
compute, and measured better on the dense tasks here (docs/benchmarks.md, ``radfm bench encoder``).

Stage ``s`` runs at stride ``2**s``: stage 0 is a 3×3×3 stem and residual blocks at full
resolution; every later stage starts with a strided 3×3×3 conv. Norm: InstanceNorm (affine),
the choice of nnU-Net for small 3D batches. LoRA target names (peft): ``conv1``, ``conv2`` (the
residual blocks), ``down`` (strided convs), ``stem``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvNormAct", "ConvTrunk3d", "ResBlock3d"]


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True, eps=1e-5)


class ConvNormAct(nn.Module):
    """3×3×3 conv (optionally strided) → InstanceNorm → LeakyReLU. ``(B, Ci, …)`` → ``(B, Co, …/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = _norm(out_channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Two 3×3×3 conv + norm with an identity shortcut (He et al.). Shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = _norm(channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = _norm(channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + x)


class ConvTrunk3d(nn.Module):
    """Stages of residual blocks at strides 1, 2, 4, … (one stage per entry of ``channels``).

    Args:
        in_channels: image channels.
        channels: width of each stage, finest first (e.g. ``(16, 32, 64, 128, 192)``).
        blocks: residual blocks per stage (same length).
    Forward: ``(B, C, D, H, W)`` with ``D, H, W`` multiples of ``2**(len(channels) - 1)`` →
    one map per stage, finest first, stage ``s`` of shape ``(B, channels[s], D/2**s, …)``.
    """

    def __init__(self, *, in_channels: int, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        self.stem = ConvNormAct(in_channels, channels[0])
        self.down = nn.ModuleList(
            [nn.Identity()] + [ConvNormAct(channels[i - 1], channels[i], stride=2) for i in range(1, len(channels))]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ResBlock3d(c) for _ in range(n)]) for c, n in zip(channels, blocks)
        )

    def forward(self, x: torch.Tensor, stem_bias: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``stem_bias``: optional ``(B, channels[0])`` added after the stem (the modality vector)."""
        x = self.stem(x)
        if stem_bias is not None:
            x = x + stem_bias[:, :, None, None, None].to(x.dtype)
        feats = []
        for down, stage in zip(self.down, self.stages):
            x = stage(down(x))
            feats.append(x)
        return feats
