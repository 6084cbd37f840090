"""The initialisation every radfm head shares: Xavier linears, Kaiming 3D convs, unit norms.

Why one place: the MAE decoder and the task heads initialised these layers with the same lines;
a change (say the conv nonlinearity) must reach all of them. Goes through
``transformers.initialization`` so weights loaded from a checkpoint are left alone.
"""

from __future__ import annotations

from torch import nn
from transformers import initialization as init

__all__ = ["init_standard_layer"]


def init_standard_layer(module: nn.Module, *, convs: bool = True) -> bool:
    """Initialise ``module`` if it is a Linear, a (transposed) Conv3d or a LayerNorm/InstanceNorm3d.

    ``convs=False`` leaves convolutions to their owner (a ViT patch embedding). Returns whether
    ``module`` was one of these kinds, so callers handle their own layers afterwards.
    """
    if isinstance(module, nn.Linear):
        init.xavier_uniform_(module.weight)
    elif isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        if not convs:
            return False
        init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
    elif isinstance(module, (nn.LayerNorm, nn.InstanceNorm3d)):
        if module.weight is None:
            return True
        init.ones_(module.weight)
    else:
        return False
    if module.bias is not None:
        init.zeros_(module.bias)
    return True
