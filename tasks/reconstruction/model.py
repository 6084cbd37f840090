"""The reconstruction networks: an E2E-VarNet-style unrolled MRI model and an FBPConvNet for CT.

Why a small 2D U-Net per cascade and not the shared encoder's blocks: the shared encoder is a 3D
network on whole volumes (CT/MR patches, MAE-pretrained on magnitude images), while k-space
arrives one 2D slice at a time as a complex image whose aliasing is a 2D, phase-carrying pattern.
A 2-channel (real, imaginary) 2D U-Net per cascade is what E2E-VarNet uses, is cheap enough to
train on a CPU in minutes, and keeps the shipped weights a few hundred kB (the 30 MB budget).

MRI (:class:`RadFMVarNet`), per cascade ``t`` on the coil k-space ``k`` (fastMRI's VarNetBlock):
``k ← k − η_t M (k − y) − F S R_t(Σ_c S_cᴴ Fᴴ k_c)``: a learned soft data-consistency step plus a
learned regulariser ``R_t`` (a normalised U-Net). After the last cascade the acquired samples are
put back exactly (hard data consistency), so the output never contradicts the measured lines; the
magnitude is the root sum of squares of the coil images. Single-coil data is ``C = 1``, ``S = 1``.

CT (:class:`RadFMFBPConvNet`): FBP image (μ/μ_water) + a residual U-Net (Jin et al. 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from radfm.errors import ConfigError, InputError
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.reconstruction import operators as ops

__all__ = ["RadFMFBPConvNet", "RadFMFBPConvNetConfig", "RadFMVarNet", "RadFMVarNetConfig", "UNet2d",
           "load_recon_model"]


# ----------------------------------------------------------------------------- U-Net
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
    )


class UNet2d(nn.Module):
    """The fastMRI U-Net, narrowed: ``pools`` average-pool levels, ``chans·2^i`` channels at level ``i``.
    Input sides must be multiples of ``2**pools`` (callers pad)."""

    def __init__(self, cin: int, cout: int, chans: int, pools: int) -> None:
        super().__init__()
        self.down = nn.ModuleList([_block(cin, chans)])
        for i in range(pools - 1):
            self.down.append(_block(chans * 2**i, chans * 2 ** (i + 1)))
        self.bottom = _block(chans * 2 ** (pools - 1), chans * 2**pools)
        self.up_t = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(pools)):
            self.up_t.append(nn.ConvTranspose2d(chans * 2 ** (i + 1), chans * 2**i, 2, stride=2, bias=False))
            self.up.append(_block(chans * 2 ** (i + 1), chans * 2**i))
        self.out = nn.Conv2d(chans, cout, 1)
        self.multiple = 2**pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.bottom(x)
        for t, blk in zip(self.up_t, self.up):
            x = blk(torch.cat([t(x), skips.pop()], dim=1))
        return self.out(x)


def _pad_to(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad), pad


def _unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


class NormUNet(nn.Module):
    """U-Net on a complex image as (real, imag) channels, normalised per image by mean and std
    (fastMRI's NormUnet), so one set of weights serves any intensity scale."""

    def __init__(self, chans: int, pools: int) -> None:
        super().__init__()
        self.unet = UNet2d(2, 2, chans, pools)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([x.real, x.imag], dim=1)
        mean = z.mean(dim=(1, 2, 3), keepdim=True)
        std = z.std(dim=(1, 2, 3), keepdim=True) + 1e-6
        z, pad = _pad_to((z - mean) / std, self.unet.multiple)
        z = _unpad(self.unet(z), pad) * std + mean
        return torch.complex(z[:, 0], z[:, 1])


class _SavesPlan:
    """``save_pretrained`` writes ``preprocess_plan.json`` beside config and weights (architecture rule)."""

    plan: PreprocessPlan

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        self.plan.save(save_directory)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
            if module.bias is not None:
                init.zeros_(module.bias)


# ----------------------------------------------------------------------------- MRI
@strict
class RadFMVarNetConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMVarNet`.

    Args:
        cascades: unrolled iterations (each: soft DC + its own U-Net).
        chans: U-Net width at full resolution.
        pools: U-Net depth (down-sampling levels).
        hard_dc: put the acquired k-space samples back after the last cascade.
    """

    model_type = "radfm_recon_varnet"
    cascades: int = 5
    chans: int = 8
    pools: int = 2
    hard_dc: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.cascades < 1 or self.chans < 1 or self.pools < 1:
            raise ConfigError(f"cascades, chans and pools must be >= 1, got {self.cascades}, {self.chans}, {self.pools}.")


class RadFMVarNet(_SavesPlan, PreTrainedModel):
    """Unrolled MRI reconstruction: masked coil k-space + mask + coil maps → coil k-space, magnitude."""

    config_class = RadFMVarNetConfig
    base_model_prefix = "radfm_varnet"
    main_input_name = "kspace"

    def __init__(self, config: RadFMVarNetConfig) -> None:
        super().__init__(config)
        self.regularisers = nn.ModuleList([NormUNet(config.chans, config.pools) for _ in range(config.cascades)])
        self.dc_weights = nn.Parameter(torch.ones(config.cascades))
        self.plan = PreprocessPlan(modality="MR", target_spacing=None, normalization="percentile",
                                   patch_size=(1, 128, 128), pad_multiple=(1, 2**config.pools, 2**config.pools),
                                   notes={"task": "reconstruction", "input": "fastMRI k-space (fft2c), already masked",
                                          "scale": "k-space divided by the 99th percentile of the zero-filled RSS"})
        self.post_init()

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``kspace`` (B, C, H, W) complex (masked), ``mask`` (B, W), ``sens`` (B, C, H, W) complex.

        Returns ``kspace`` (B, C, H, W), ``image`` (B, H, W) complex (coil-combined with ``sens``)
        and ``magnitude`` (B, H, W) (RSS of the coil images).
        """
        if kspace.ndim != 4 or sens.shape != kspace.shape or mask.shape != (kspace.shape[0], kspace.shape[-1]):
            raise InputError(f"VarNet needs kspace/sens (B, C, H, W) and mask (B, W); got {tuple(kspace.shape)}, "
                             f"{tuple(sens.shape)}, {tuple(mask.shape)}.")
        m = mask[:, None, None, :].to(kspace.real.dtype)
        y = kspace
        k = y
        for t, reg in enumerate(self.regularisers):
            x = (sens.conj() * ops.ifft2c(k)).sum(dim=1)
            k = k - self.dc_weights[t] * m * (k - y) - ops.fft2c(sens * reg(x)[:, None])
        if self.config.hard_dc:
            k = (1 - m) * k + m * y
        coil = ops.ifft2c(k)
        return {"kspace": k, "image": (sens.conj() * coil).sum(dim=1), "magnitude": ops.rss(coil)}


# ----------------------------------------------------------------------------- CT
@strict
class RadFMFBPConvNetConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMFBPConvNet` (residual U-Net over FBP, μ/μ_water in and out).

    Args:
        chans: U-Net width at full resolution.
        pools: U-Net depth; sparse-view streaks span the image, so deeper than the MRI regulariser.
        size: the image side the model was trained at (FBP grids of other sides are resized to it).
    """

    model_type = "radfm_recon_fbpconvnet"
    chans: int = 8
    pools: int = 3
    size: int = 256

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.chans < 1 or self.pools < 1 or self.size < 16:
            raise ConfigError(f"chans, pools >= 1 and size >= 16 needed, got {self.chans}, {self.pools}, {self.size}.")


class RadFMFBPConvNet(_SavesPlan, PreTrainedModel):
    """Learned post-processing of FBP: ``fbp (B, 1, H, W)`` μ/μ_water → artefact-reduced μ/μ_water."""

    config_class = RadFMFBPConvNetConfig
    base_model_prefix = "radfm_fbpconvnet"
    main_input_name = "fbp"

    def __init__(self, config: RadFMFBPConvNetConfig) -> None:
        super().__init__(config)
        self.unet = UNet2d(1, 1, config.chans, config.pools)
        self.plan = PreprocessPlan(modality="CT", target_spacing=None, normalization="ct_window",
                                   patch_size=(1, config.size, config.size),
                                   pad_multiple=(1, 2**config.pools, 2**config.pools),
                                   notes={"task": "reconstruction", "input": "FBP (skimage iradon, ramp) of a "
                                          "relative_to_water parallel-beam sinogram", "output": "mu/mu_water; HU = 1000 mu - 1000"})
        self.post_init()
        with torch.no_grad():  # start at the FBP itself (from_pretrained then loads the trained weights)
            self.unet.out.weight.zero_()
            self.unet.out.bias.zero_()

    def forward(self, fbp: torch.Tensor) -> torch.Tensor:
        if fbp.ndim != 4 or fbp.shape[1] != 1:
            raise InputError(f"FBPConvNet needs (B, 1, H, W), got {tuple(fbp.shape)}.")
        z, pad = _pad_to(fbp, self.unet.multiple)
        return fbp + _unpad(self.unet(z), pad)


# ----------------------------------------------------------------------------- save / load
def load_recon_model(path: str | Path) -> RadFMVarNet | RadFMFBPConvNet:
    """Load a model folder of either kind (told by ``config.json``'s ``model_type``), in eval mode."""
    import json

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"{p} is not a radfm reconstruction model directory (no config.json).")
    kind = json.loads((p / "config.json").read_text()).get("model_type")
    classes = {RadFMVarNetConfig.model_type: RadFMVarNet, RadFMFBPConvNetConfig.model_type: RadFMFBPConvNet}
    if kind not in classes:
        raise ConfigError(f"{p} holds a {kind!r} model, not a reconstruction model.")
    model = classes[kind].from_pretrained(p)
    model.plan = PreprocessPlan.load(p)
    return model.eval()
