"""Channel expansion of a (pretrained) encoder: single-channel CT/MR weights → multi-sequence input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from radfm.errors import ConfigError

if TYPE_CHECKING:
    from radfm.models.encoder import RadFMEncoder

__all__ = ["expand_input_channels"]


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
