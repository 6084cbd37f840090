"""The synthesis network: the shared CNN encoder + a small U-shaped decoder, image in HU → image in HU.

Why a U-shaped decoder on the encoder's own maps: the shared CNN already keeps features at strides
1, 2, 4, 8 and 16; the decoder upsamples from stride 16 and joins every map on the way (the skip at
stride 1 carries full-resolution detail, plus the input itself), so fine texture (the noise to remove
and the edges to keep) never has to pass the bottleneck.

Why residual: low-dose → full-dose changes a voxel by tens of HU out of thousands; predicting the
correction (``output = input + correction_scale_hu * head(…)``, the head starts at zero so an
untrained model is the identity) keeps the network on the noise, not on re-drawing anatomy
(RED-CNN's choice).

Intensities: the model takes the plan's linear window (``HU_RANGE`` → [-1, 1], read back to HU
exactly), feeds the encoder the soft-tissue map it was trained on (``tanh((HU - 40) / 200)``,
``radfm.preprocess.plan.ct_soft_tissue``) and the full-resolution decoder level also the linear
HU / 1000 (the tanh flattens bone and air). Output in HU.

Encoder: radfm's shared CNN (``from_shared_encoder``), never stored in the checkpoint (its file
SHA-256 is recorded and checked on load); frozen, or LoRA-adapted with the adapter saved APART in
``encoder_adapter/`` through ``radfm.adapters`` (:func:`save_synthesis`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from radfm.adapters.shared_encoder import ADAPTER_SUBDIR
from radfm.errors import ConfigError, InputError
from radfm.models import MODALITY_IDS, RadFMEncoder
from radfm.preprocess.plan import CT_SOFT_CENTRE_HU, CT_SOFT_SCALE_HU, PreprocessPlan
from radfm.tasks.synthesis.config import HU_RANGE, RadFMSynthConfig

__all__ = ["ADAPTER_SUBDIR", "SYNTH_TASK", "RadFMSynthesis", "save_synthesis", "window_to_hu"]

SYNTH_TASK = "synthesis"
#: Decoder levels with fewer grid voxels than this run in float32 even under bf16 autocast.
_BF16_MIN_VOXELS = 16**3


def window_to_hu(x: torch.Tensor) -> torch.Tensor:
    """The plan's [-1, 1] window back to HU."""
    lo, hi = HU_RANGE
    return (x + 1.0) * 0.5 * (hi - lo) + lo


def hu_to_window(hu: torch.Tensor) -> torch.Tensor:
    """HU to the plan's [-1, 1] window (clipped), the model's input."""
    lo, hi = HU_RANGE
    return (hu.clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


class _Up(nn.Module):
    """Upsample the deeper map to the skip's grid, concatenate, 3×3×3 conv + LeakyReLU."""

    def __init__(self, cin: int, cout: int, *, convs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            conv = nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1)
            conv._radfm_synth_init = "kaiming"  # read by RadFMSynthesis._init_weights
            layers += [conv, nn.LeakyReLU(0.1, inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(deep, size=skip.shape[2:], mode="trilinear", align_corners=False)
        x = torch.cat([deep, skip.to(deep.dtype)], dim=1)
        if skip.shape[2:].numel() < _BF16_MIN_VOXELS:
            # Coarse levels in float32: oneDNN's bf16 conv3d weight gradient gave NaN/inf on grids of a
            # few voxels (seen here and in registration); they cost nothing.
            with torch.autocast(x.device.type, enabled=False):
                return self.body(x.float())
        return self.body(x)


class RadFMSynthesis(PreTrainedModel):
    """``forward(x)``: ``(B, 1, D, H, W)`` plan-window input (D, H, W multiples of 16) → ``(B, 1, D, H, W)`` HU."""

    config_class = RadFMSynthConfig
    base_model_prefix = "radfm_synth"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: RadFMSynthConfig) -> None:
        super().__init__(config)
        enc = config.encoder_config
        self.encoder = RadFMEncoder(enc)
        ch = list(enc.cnn_channels)  # strides 1, 2, 4, 8, 16
        d8, d4, d2, d1 = config.decoder_channels
        self.decoder = nn.ModuleList([
            _Up(ch[4] + ch[3], d8), _Up(d8 + ch[2], d4), _Up(d4 + ch[1], d2), _Up(d2 + ch[0] + 2, d1, convs=2),
        ])
        self.head = nn.Conv3d(d1, 1, 1)
        self.head._radfm_synth_init = "zero"
        self.plan = config.default_plan()
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Decoder convs Kaiming, the head zero (an untrained model is the identity); the encoder,
        a PreTrainedModel, initialises itself."""
        tag = getattr(module, "_radfm_synth_init", None)
        if isinstance(module, nn.Conv3d) and tag == "zero":
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv3d) and tag == "kaiming":
            init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
            init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Plan-window input → synthesised HU (float32), same shape."""
        x = pixel_values
        if x.ndim != 5 or x.shape[1] != 1:
            raise InputError(f"expected (B, 1, D, H, W), got {tuple(x.shape)}.")
        if any(s % 16 for s in x.shape[2:]):
            raise InputError(f"grid {tuple(x.shape[2:])} is not a multiple of 16 along every axis.")
        hu = window_to_hu(x.float())
        soft = torch.tanh((hu - CT_SOFT_CENTRE_HU) / CT_SOFT_SCALE_HU)
        ids = torch.full((x.shape[0],), MODALITY_IDS["CT"], dtype=torch.long, device=x.device)
        maps = self.encoder(soft.to(x.dtype), modality_ids=ids, output_pyramid=False).feature_maps
        y = self.decoder[0](maps[4], maps[3])
        y = self.decoder[1](y, maps[2])
        y = self.decoder[2](y, maps[1])
        y = self.decoder[3](y, torch.cat([maps[0], soft.to(maps[0].dtype), (hu / 1000.0).to(maps[0].dtype)], 1))
        corr = self.head(y).float() * self.config.correction_scale_hu
        return hu + corr if self.config.residual else corr

    # --- save / load ----------------------------------------------------------------------------
    @classmethod
    def from_shared_encoder(cls, **config_kwargs: Any) -> RadFMSynthesis:
        """A new model on radfm's shared CNN encoder (weights loaded, file SHA-256 recorded); decoder fresh."""
        from radfm.adapters.shared_encoder import build_on_shared_encoder

        return build_on_shared_encoder(cls, RadFMSynthConfig, **config_kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """config.json + model.safetensors (no shared-encoder weights) + preprocess_plan.json."""
        if self.config.encoder_source == "shared" and "state_dict" not in kwargs:
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        super().save_pretrained(save_directory, *args, **kwargs)
        self.plan.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Load a model folder (plan required); the shared encoder is re-attached (SHA checked), then its
        LoRA adapter from ``encoder_adapter/`` when present (merged unless ``merge_adapter=False``)."""
        merge_adapter = bool(kwargs.pop("merge_adapter", True))
        path = Path(pretrained_model_name_or_path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise ConfigError(f"{path} is not a radfm synthesis model folder (config.json + model.safetensors).",
                              "Pass a folder written by radfm train synthesis / save_synthesis.")
        plan = PreprocessPlan.load(path)
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the shared encoder's keys are missing on purpose
        try:
            model = super().from_pretrained(path, *args, use_safetensors=True, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        model.plan = plan
        if model.config.encoder_source != "shared":
            return model.eval()
        from radfm.adapters.shared_encoder import attach_shared_encoder

        return attach_shared_encoder(model, path, expected_sha256=model.config.encoder_sha256,
                                     retrain_hint="Retrain: radfm train synthesis -c configs/synthesis/lowdose.yaml",
                                     merge_adapter=merge_adapter)


def save_synthesis(model: Any, save_directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Save a synthesis model, plain or peft-wrapped: the decoder in the folder, the encoder LoRA APART in
    ``encoder_adapter/`` (``radfm.adapters.save_encoder_adapter``, with the encoder's SHA-256).

    ``dtype=torch.bfloat16`` stores the weights in bf16 (half the bytes; the shipped model) while
    config.json keeps ``"dtype": "float32"``, so ``from_pretrained`` builds a float32 model, as the
    shared encoder's folder does."""
    from radfm.adapters.shared_encoder import save_with_adapter_apart

    base = model.get_base_model() if hasattr(model, "peft_config") else model
    state = None if dtype is None else {
        k: v.detach().to(dtype) for k, v in base.state_dict().items()
        if not (base.config.encoder_source == "shared" and k.startswith("encoder."))}
    return save_with_adapter_apart(model, save_directory, task=SYNTH_TASK, state_dict=state)


def pad16(n: int) -> int:
    """``n`` rounded up to a multiple of 16."""
    return int(math.ceil(n / 16) * 16)
