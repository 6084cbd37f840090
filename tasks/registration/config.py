"""Config of the registration network (:class:`RadFMRegConfig`) and its default encoder.

Apart from ``model.py`` so that a config can be read, validated and written without building the
network. The model's design notes are in ``model.py``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from radfm.errors import ConfigError
from radfm.models import RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan

__all__ = ["RadFMRegConfig", "default_encoder_config"]


def default_encoder_config(**overrides: Any) -> RadFMEncoderConfig:
    """The shipped model's encoder: a narrowed "tiny" preset (width 32, 2 blocks) with 8³ patches.

    Why 8³ and not tiny's 4³: on an 80×96×112 grid 4³ patches give 13k tokens and the attention
    alone costs ~50 GFLOP per block; 8³ gives 1.7k tokens (pyramid strides 2-16 on the 2 mm grid).
    Why so small: the model is trained on a 2-core CPU in about an hour; wider decoders (32-48)
    and the 64-wide encoder diverged or learned several times slower per CPU-second.
    """
    kw = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "patch_size": (8, 8, 8), **overrides}
    return RadFMEncoderConfig.from_preset("tiny", **kw)


# ----------------------------------------------------------------------------- config
@strict
class RadFMRegConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMRegistration`.

    Args:
        encoder_config: a :class:`RadFMEncoderConfig` (or its dict); default
            :func:`default_encoder_config`. Its patch must be a cube whose side is a power of 2
            (>= 4) so that every pyramid stride is an isotropic power of 2.
        stem_channels: channels of the conv stem at strides 1, 2, 4 … (one entry per stride);
            the stem must reach the encoder's finest pyramid stride so no level lacks features.
        decoder_channels: width of each decoder level, coarsest first; ``None`` = by stride
            (>= 4: 16, 2: 12, 1: 8).
        corr_radius: neighbourhood radius of the correlation layer (1 -> 27 channels).
        coarsest_stride: stride of the first decoder level (a power of 2); the encoder's coarser
            pyramid maps are upsampled and joined there as context. Why not decode from the ViT's
            stride 16: trained on CPU-sized crops (32-64 voxels), a stride-16 level sees only 2-4
            cells, all at the border, and on a whole scan it met an interior it had never seen
            and predicted large wrong motions (Dice fell below no registration). At stride 4
            the correlation reaches ±8 mm, and the finer levels add ±4 and ±2 mm.
        corr_min_stride: levels finer than this stride skip the correlation (it is the costly
            part on large grids). Default 1 (every level): without the correlation at the two
            finest levels training from simulated pairs needed several times more steps.
        diffeomorphic: predict a stationary velocity field (sum of per-level residual
            velocities) integrated by scaling and squaring, instead of composed displacements.
        int_steps: scaling-and-squaring steps.
        target_spacing: model grid spacing in mm (X, Y, Z), written into the plan.
        similarity: the similarity the model was trained with ("ncc" or "mi"); api.py refuses
            CT↔MR pairs with "ncc".
        modalities: modalities seen in training (documentation for the model card / api).
        encoder_source: ``None``: the checkpoint holds every weight. ``"starter"``: the encoder's
            trunk is radfm's starter encoder (``radfm.starter``), kept frozen in training and NOT
            stored in the checkpoint (only its feature pyramid, trained here, is), so a model on
            the 4 M-parameter starter encoder stays a few MB; it is re-attached on load.
            ``"shared"``: the encoder is radfm's shared CNN (``radfm.starter``, kind "cnn",
            ``architecture="cnn"``); its multi-scale ``feature_maps`` feed the decoder through
            1×1 projections (no conv stem), the encoder is adapted with LoRA saved APART in
            ``encoder_adapter/`` (peft layout + ``radfm_adapter.json``) and the checkpoint holds
            the projections and decoder only.
        encoder_sha256: SHA-256 of the starter/shared encoder's ``model.safetensors`` the model
            was trained on; loading refuses a different encoder file.
        feature_channels: CNN encoders only: width of each level's 1×1 projection of the
            encoder maps (coarsest first), the features the correlation compares.
    """

    model_type = "radfm_registration"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=RadFMEncoderConfig),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    stem_channels: list[int] | tuple[int, ...] = (4, 8)
    decoder_channels: list[int] | tuple[int, ...] | None = None
    corr_radius: int = 1
    corr_min_stride: int = 1
    coarsest_stride: int = 4
    diffeomorphic: bool = False
    int_steps: int = 7
    target_spacing: list[float] | tuple[float, ...] = (2.0, 2.0, 2.0)
    similarity: str = "ncc"
    modalities: list[str] | tuple[str, ...] = ("CT", "MR")
    encoder_source: str | None = None
    encoder_sha256: str | None = None
    feature_channels: list[int] | tuple[int, ...] = (32, 16, 8)

    def __post_init__(self, **kwargs: Any) -> None:
        if self.encoder_config is None:
            self.encoder_config = default_encoder_config()
        super().__post_init__(**kwargs)
        enc = self.encoder_config
        p = tuple(enc.patch_size)
        if len(set(p)) != 1 or p[0] < 4 or p[0] & (p[0] - 1):
            raise ConfigError(
                f"registration needs a cubic power-of-2 encoder patch (>= 4), got {p}.",
                "Use e.g. patch_size=(8, 8, 8) or (16, 16, 16).",
            )
        self.stem_channels = [int(c) for c in self.stem_channels]
        if not self.stem_channels or min(self.stem_channels) < 1:
            raise ConfigError(f"stem_channels must be positive ints, got {self.stem_channels}.")
        finest_encoder = enc.pyramid_strides[0][0]
        if self.is_cnn:
            if self.encoder_source == "starter":
                raise ConfigError("encoder_source='starter' is the ViT starter encoder; a CNN encoder uses 'shared'.")
        elif self.encoder_source == "shared":
            raise ConfigError("encoder_source='shared' needs the shared CNN encoder (architecture='cnn').")
        elif 2 ** (len(self.stem_channels) - 1) < finest_encoder // 2:
            raise ConfigError(
                f"the conv stem reaches stride {2 ** (len(self.stem_channels) - 1)} but the encoder's finest "
                f"pyramid stride is {finest_encoder}: a decoder level would have no features.",
                f"Give stem_channels {int(math.log2(finest_encoder))} or more entries.",
            )
        if self.coarsest_stride < 1 or self.coarsest_stride & (self.coarsest_stride - 1):
            raise ConfigError(f"coarsest_stride must be a power of 2, got {self.coarsest_stride}.")
        n = len(self.strides)
        if self.decoder_channels is None:
            self.decoder_channels = [16 if s >= 4 else {2: 12, 1: 8}[s] for s in self.strides]
        self.decoder_channels = [int(c) for c in self.decoder_channels]
        if len(self.decoder_channels) != n or min(self.decoder_channels) < 1:
            raise ConfigError(f"decoder_channels needs {n} positive widths (levels at strides {self.strides}), "
                              f"got {self.decoder_channels}.")
        self.target_spacing = [float(s) for s in self.target_spacing]
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ConfigError(f"target_spacing must be three positive mm values, got {self.target_spacing}.")
        if self.encoder_source not in (None, "starter", "shared"):
            raise ConfigError(f"encoder_source must be None, 'starter' or 'shared', got {self.encoder_source!r}.")
        self.feature_channels = [int(c) for c in self.feature_channels]
        if self.is_cnn and (len(self.feature_channels) != n or min(self.feature_channels) < 1):
            raise ConfigError(f"feature_channels needs {n} positive widths (levels at strides {self.strides}), "
                              f"got {self.feature_channels}.")
        if self.similarity not in ("ncc", "mi"):
            raise ConfigError(f"similarity must be 'ncc' or 'mi', got {self.similarity!r}.")
        if self.int_steps < 1 or self.corr_radius < 0:
            raise ConfigError("int_steps must be >= 1 and corr_radius >= 0.")
        self.modalities = [str(m) for m in self.modalities]

    @property
    def is_cnn(self) -> bool:
        """The encoder is a residual CNN (the shared encoder): features from its ``feature_maps``."""
        return getattr(self.encoder_config, "architecture", "vit") == "cnn"

    @property
    def strides(self) -> list[int]:
        """Decoder level strides on the model grid, coarsest first (``coarsest_stride`` .. 1)."""
        deepest = (2 ** (len(self.encoder_config.cnn_channels) - 1) if self.is_cnn
                   else self.encoder_config.pyramid_strides[-1][0])
        coarsest = min(self.coarsest_stride, deepest)
        return [2**k for k in range(int(math.log2(coarsest)), -1, -1)]

    @property
    def pad_multiple(self) -> int:
        """The model grid must be a multiple of this (encoder patch and first decoder stride) per axis."""
        return max(self.strides[0], self.encoder_config.patch_size[0])

    def default_plan(self) -> PreprocessPlan:
        """The input recipe: percentile normalisation, ``target_spacing``, padding to ``pad_multiple``."""
        m = self.pad_multiple
        return PreprocessPlan(
            modality="any", target_spacing=tuple(self.target_spacing), normalization="percentile",
            patch_size=(m * 4, m * 4, m * 4), pad_multiple=(m, m, m),
            notes={"task": "registration", "field": "voxels of the plan grid, warped(x) = moving(x + u(x))"},
        )
