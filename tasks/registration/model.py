"""The registration network: shared encoder (siamese) + coarse-to-fine field decoder.

Read top to bottom: config, the conv stem, one decoder level, the model, save/load.

Why siamese and not channel-stacked: the shared encoder is pretrained on ONE image per
forward (MAE on single-channel CT/MR). Run on fixed and moving separately (one batched
forward) its features keep that meaning, each image gets its own modality id (CT↔MR pairs),
and the same LoRA-adapted weights serve both images. Stacking the pair into 2 channels would
force a new patch embedding that mixes the images in the first layer, so the pretraining
would no longer apply where it matters most. The price (two encoder passes) is small at the
model grid (2 mm by default).

Why coarse-to-fine with a correlation layer (PWC-Net / Dual-PRNet style): each level warps the
moving features with the field so far, compares them with the fixed features over a 3³
neighbourhood and predicts only a small residual. Large motions are found at the coarse
ViT levels, detail at the conv-stem levels, and the comparison is on feature similarity
rather than raw intensities, which carries over from simulated to real training pairs.

Encoders: the shipped model (today) has its own tiny ViT trained from scratch. On radfm's shared
CNN encoder (``from_shared_encoder``, ``encoder_source="shared"``) the CNN's own maps at strides
1-16 replace the ViT pyramid and the conv stem, 1×1 projections narrow them per level, the CNN is
adapted with LoRA saved apart (``save_registration``: ``encoder_adapter/``, peft layout + the
encoder's SHA-256) and the checkpoint holds projections + decoder only.

Grids: the model works on the plan grid (``preprocess_plan.json``: the fixed image resampled
to ``target_spacing``, 2 mm by default, padded to a multiple of the coarsest stride); api.py
upsamples the field to the fixed image's own grid. Fields: ``(B, 3, D, H, W)`` voxels of the
grid they live on, convention ``warped(x) = moving(x + u(x))`` (see ``functional.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from radfm.errors import ConfigError, InputError
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.registration import functional as RF

__all__ = ["ADAPTER_SUBDIR", "REG_TASK", "RadFMRegConfig", "RadFMRegistration", "RegistrationOutput",
           "default_encoder_config", "save_registration"]

#: Folder (inside a registration model directory) of the shared encoder's LoRA adapter (peft layout).
ADAPTER_SUBDIR = "encoder_adapter"
#: Task name written into the adapter's ``radfm_adapter.json``.
REG_TASK = "registration"

#: Decoder levels with fewer grid voxels than this run in float32 even under bf16 autocast.
_BF16_MIN_VOXELS = 16**3


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


# ----------------------------------------------------------------------------- building blocks
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
    conv._radfm_reg_init = "kaiming"  # read by RadFMRegistration._init_weights (leaf modules only)
    return nn.Sequential(conv, nn.LeakyReLU(0.2))


class ConvStem(nn.Module):
    """Image features at strides 1, 2, 4 …: ``(B, 1, D, H, W)`` -> list of ``(B, c_i, D/2^i, …)``.

    Why: ViT pyramids start at patch/4; the conv stem supplies the fine levels where small
    structures are aligned (TransMorph's skip convs play the same role).
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        blocks, cin = [], 1
        for i, c in enumerate(channels):
            blocks.append(_conv(cin, c) if i == 0 else nn.Sequential(_conv(cin, c, stride=2), _conv(c, c)))
            cin = c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


class LevelDecoder(nn.Module):
    """One level: [fixed feats, warped moving feats, correlation, field so far] -> residual field.

    ``(B, in, d, h, w)`` -> ``(B, 3, d, h, w)`` voxels of this level. The last conv starts at zero
    so an untrained model predicts the identity.
    """

    def __init__(self, in_channels: int, width: int, *, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, width)]
        layers += [_conv(width, width) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers)
        self.flow = nn.Conv3d(width, 3, 3, padding=1)
        self.flow._radfm_reg_init = "zero"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow(self.body(x))


@dataclass
class RegistrationOutput(ModelOutput):
    """Output of :class:`RadFMRegistration`.

    Args:
        ddf: ``(B, 3, D, H, W)`` displacement in voxels of the model grid, ``(dz, dy, dx)``.
        svf: the stationary velocity field (same shape) when ``diffeomorphic``, else ``None``.
        level_fields: the displacement after each level, coarsest first (each on its own grid,
            in its own voxels), for deep supervision.
    """

    ddf: torch.Tensor | None = None
    svf: torch.Tensor | None = None
    level_fields: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------- the model
class RadFMRegistration(PreTrainedModel):
    """Deformable registration on the shared encoder: ``(fixed, moving)`` -> dense field.

    ``forward(fixed, moving)`` takes normalised ``(B, 1, D, H, W)`` tensors on the same grid
    (``D, H, W`` multiples of ``config.pad_multiple``) and returns the field that warps moving
    onto fixed. Volumes, world coordinates and millimetres are handled in ``api.register``.
    """

    config_class = RadFMRegConfig
    base_model_prefix = "radfm_reg"
    main_input_name = "fixed"
    input_modalities = ("image",)
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: RadFMRegConfig) -> None:
        super().__init__(config)
        enc = config.encoder_config
        self.encoder = RadFMEncoder(enc)
        cnn = config.is_cnn
        # CNN: every stride has its own encoder map, so no conv stem; 1x1 projections narrow the maps.
        self.stem = None if cnn else ConvStem(config.stem_channels)
        enc_strides = [2**k for k in range(len(enc.cnn_channels))] if cnn else [s[0] for s in enc.pyramid_strides]
        enc_channels = enc.cnn_channels if cnn else enc.pyramid_channels
        ncorr = (2 * config.corr_radius + 1) ** 3
        self._level_sources: list[tuple[list[int], int | None]] = []
        decoders, projections = [], []
        for i, (stride, width) in enumerate(zip(config.strides, config.decoder_channels)):
            enc_levels = [j for j, s in enumerate(enc_strides) if s == stride or (i == 0 and s > stride)]
            k = int(math.log2(stride))
            stem_level = k if k < len(config.stem_channels) and not cnn else None
            self._level_sources.append((enc_levels, stem_level))
            feat = sum(enc_channels[j] for j in enc_levels)
            feat += config.stem_channels[stem_level] if stem_level is not None else 0
            if cnn:
                proj = nn.Conv3d(feat, config.feature_channels[i], 1)
                proj._radfm_reg_init = "kaiming"
                projections.append(proj)
                feat = config.feature_channels[i]
            cin = 2 * feat + (ncorr if stride >= config.corr_min_stride else 0) + (3 if i else 0)
            decoders.append(LevelDecoder(cin, width, depth=2 if stride >= 2 else 1))
        self.decoders = nn.ModuleList(decoders)
        self.proj = nn.ModuleList(projections) if cnn else None
        self.plan = config.default_plan()
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Stem/decoder init (the encoder, a PreTrainedModel, initialises itself).

        The flow convs start at zero so that an untrained model predicts the identity map and
        early training steps cannot fold space.
        """
        if isinstance(module, nn.Conv3d) and getattr(module, "_radfm_reg_init", None) == "zero":
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv3d) and getattr(module, "_radfm_reg_init", None) == "kaiming":
            init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
            init.zeros_(module.bias)

    # --- features -------------------------------------------------------------------------------
    def features(self, fixed: torch.Tensor, moving: torch.Tensor,
                 modality_ids: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-level features of both images, coarsest first: two lists of ``(B, c_l, d_l, h_l, w_l)``.

        One batched (siamese) encoder + stem forward over ``cat([fixed, moving])``.
        ``modality_ids``: ``(2B,)`` ids for fixed then moving, or ``None``.
        """
        b = fixed.shape[0]
        both = torch.cat([fixed, moving], dim=0)
        if self.proj is not None:  # shared CNN: its stage maps at strides 1 .. 16
            pyramid = self.encoder(both, modality_ids=modality_ids, output_pyramid=False).feature_maps
            stem: list[torch.Tensor] = []
        else:
            pyramid = self.encoder(both, modality_ids=modality_ids, output_pyramid=True).feature_pyramid
            stem = self.stem(both)
        fix, mov = [], []
        for i, ((enc_levels, stem_level), stride) in enumerate(zip(self._level_sources, self.config.strides)):
            parts = [pyramid[j] for j in enc_levels] + ([stem[stem_level]] if stem_level is not None else [])
            size = tuple(n // stride for n in fixed.shape[2:])
            parts = [p if p.shape[2:] == size else F.interpolate(p, size=size, mode="trilinear") for p in parts]
            feat = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            if self.proj is not None:
                feat = self.proj[i](feat)
            fix.append(feat[:b])
            mov.append(feat[b:])
        return fix, mov

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, *,
                modality_ids: torch.Tensor | None = None) -> RegistrationOutput:
        """Predict the field that warps ``moving`` onto ``fixed``.

        Args:
            fixed, moving: ``(B, 1, D, H, W)`` normalised intensities on one grid, ``D, H, W``
                multiples of ``config.pad_multiple``.
            modality_ids: ``(B,)`` (same modality for both) or ``(2B,)`` (fixed then moving), CT=0,
                MR=1, other=2; ``None`` adds no modality vector.
        Returns:
            :class:`RegistrationOutput`; ``ddf`` is float32 even under bf16 autocast.
        """
        if fixed.ndim != 5 or fixed.shape != moving.shape or fixed.shape[1] != 1:
            raise InputError(f"fixed and moving must be (B, 1, D, H, W) of one shape, got {tuple(fixed.shape)} "
                             f"and {tuple(moving.shape)}.")
        m = self.config.pad_multiple
        if any(s % m for s in fixed.shape[2:]):
            raise InputError(f"grid {tuple(fixed.shape[2:])} is not a multiple of {m} along every axis.",
                             "Pad with radfm.models.pad_to_patch_multiple(x, (m, m, m)) first.")
        if modality_ids is not None:
            modality_ids = torch.as_tensor(modality_ids, device=fixed.device).long().reshape(-1)
            if modality_ids.numel() == fixed.shape[0]:
                modality_ids = modality_ids.repeat(2)
        fix, mov = self.features(fixed, moving, modality_ids)
        cfg = self.config
        u = v = None
        fields = []
        for i, (stride, dec) in enumerate(zip(cfg.strides, self.decoders)):
            ff, fm = fix[i], mov[i]
            size = ff.shape[2:]
            if u is not None:
                u = RF.resize_field(u, size)
                v = RF.resize_field(v, size) if v is not None else None
                fm = RF.warp(fm.float(), u).to(ff.dtype)
            parts = [ff, fm]
            if stride >= cfg.corr_min_stride:
                corr = RF.local_correlation(F.normalize(ff.float(), dim=1), F.normalize(fm.float(), dim=1),
                                            cfg.corr_radius)  # cosine similarity / C
                parts.append((corr * ff.shape[1]).to(ff.dtype))
            if u is not None:
                parts.append(u.to(ff.dtype))
            x = torch.cat(parts, dim=1)
            if x.shape[2:].numel() < _BF16_MIN_VOXELS:
                # Coarse levels run in float32: oneDNN's bf16 conv3d weight gradient returned NaN/inf
                # now and then on grids of a few voxels (seen on 2x3x3); they cost nothing anyway.
                with torch.autocast(x.device.type, enabled=False):
                    r = dec(x.float())
            else:
                r = dec(x).float()
            if cfg.diffeomorphic:
                v = r if v is None else v + r
                u = RF.integrate_velocity(v, cfg.int_steps)
            else:
                u = r if u is None else RF.compose(u, r)
            fields.append(u)
        return RegistrationOutput(ddf=u, svf=v, level_fields=tuple(fields))

    # --- save / load ----------------------------------------------------------------------------
    @classmethod
    def from_starter_encoder(cls, *, pyramid_channels: tuple[int, ...] = (16, 32, 64, 64),
                             **config_kwargs: Any) -> RadFMRegistration:
        """A new model on radfm's starter encoder (trunk loaded, pyramid/stem/decoder fresh).

        The trunk is meant to stay frozen (``TrainConfig(encoder_mode="frozen")`` trains the
        pyramid, stem and decoder); ``save_pretrained`` then stores everything but the trunk.
        """
        from radfm.starter import load_starter_encoder, starter_encoder_path

        encoder = load_starter_encoder()
        # The starter's pyramid is untrained (MAE gives it no gradient), so it is rebuilt narrower
        # here (it is trained and stored with the registration head); only the trunk is loaded.
        enc_cfg = {**encoder.config.to_dict(), "pyramid_channels": list(pyramid_channels)}
        config = RadFMRegConfig(encoder_config=enc_cfg, encoder_source="starter",
                                encoder_sha256=_file_sha256(starter_encoder_path() / "model.safetensors"),
                                **config_kwargs)
        model = cls(config)
        trunk = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pyramid.")}
        missing = model.encoder.load_state_dict(trunk, strict=False).missing_keys
        assert all(k.startswith("pyramid.") for k in missing), missing
        return model

    @classmethod
    def from_shared_encoder(cls, **config_kwargs: Any) -> RadFMRegistration:
        """A new model on radfm's shared CNN encoder (``radfm.starter``, kind "cnn"; weights loaded,
        its file SHA-256 recorded); projections and decoder fresh.

        Train it with ``encoder_mode="lora"`` (LoRA saved apart by :func:`save_registration`) or
        ``"frozen"``; the checkpoint never holds encoder weights.
        """
        from radfm.starter import load_starter_encoder, starter_encoder_path

        encoder = load_starter_encoder(kind="cnn")
        config = RadFMRegConfig(encoder_config=encoder.config.to_dict(), encoder_source="shared",
                                encoder_sha256=_file_sha256(starter_encoder_path("cnn") / "model.safetensors"),
                                **config_kwargs)
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def export_merged(self, save_directory: str | Path) -> Path:
        """Export: one self-contained checkpoint with the (merged) encoder inside (``encoder_source=None``).

        Why only here: the shipped folder keeps the adapter apart (issue 14); a single file is for
        tools that cannot load radfm's shared encoder. Needs a model loaded with the adapter merged.
        """
        import copy

        state = self.state_dict()
        if any("lora_" in k or ".base_layer." in k for k in state):
            raise ConfigError("this model still carries unmerged LoRA layers.",
                              "Load it with RadFMRegistration.from_pretrained(dir) (merge_adapter=True) first.")
        config = copy.deepcopy(self.config)
        config.encoder_source = None
        exported = type(self)(config)
        exported.load_state_dict(state)
        exported.save_pretrained(save_directory)
        return Path(save_directory)

    def _trunk_keys(self) -> set[str]:
        if self.config.encoder_source == "shared":  # nothing of the shared encoder is stored
            return {k for k in self.state_dict() if k.startswith("encoder.")}
        return {k for k in self.state_dict() if k.startswith("encoder.") and not k.startswith("encoder.pyramid.")}

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """``config.json`` + ``model.safetensors`` (transformers) + ``preprocess_plan.json``.

        With ``encoder_source="starter"`` the frozen trunk is left out of ``model.safetensors``; with
        ``"shared"`` every encoder weight is (its LoRA adapter is written by :func:`save_registration`).
        """
        if self.config.encoder_source in ("starter", "shared") and "state_dict" not in kwargs:
            trunk = self._trunk_keys()
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if k not in trunk}
        super().save_pretrained(save_directory, *args, **kwargs)
        self.plan.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any,
                        **kwargs: Any) -> RadFMRegistration:
        """Load a checkpoint directory; its ``preprocess_plan.json`` is required (ConfigError if absent).

        A model trained on the starter encoder gets the starter trunk re-attached (and refuses a
        starter encoder whose weights differ from the one it was trained on). A model on the shared
        CNN encoder gets that encoder (its file SHA-256 checked against the config) and then its
        LoRA adapter from ``encoder_adapter/`` (``radfm.adapters.load_encoder_adapter``, which checks
        the encoder's weight SHA-256 recorded in ``radfm_adapter.json``), merged in memory unless
        ``merge_adapter=False`` (then a peft model comes back, e.g. to continue training).
        """
        merge_adapter = bool(kwargs.pop("merge_adapter", True))
        path = Path(pretrained_model_name_or_path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a radfm registration model directory (no config.json).",
                              "Pass a folder written by RadFMRegistration.save_pretrained or radfm's trainer.")
        plan = PreprocessPlan.load(path)
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the trunk keys are missing on purpose
        try:
            model = super().from_pretrained(path, *args, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
        if model.config.encoder_source == "starter":
            from radfm.starter import load_starter_encoder, starter_encoder_path

            sha = _file_sha256(starter_encoder_path() / "model.safetensors")
            if model.config.encoder_sha256 and sha != model.config.encoder_sha256:
                raise ConfigError(
                    f"{path} was trained on another starter encoder (sha256 {model.config.encoder_sha256[:12]}…, "
                    f"installed {sha[:12]}…).", "Retrain the registration model on the installed starter encoder.")
            trunk = {k: v for k, v in load_starter_encoder().state_dict().items() if not k.startswith("pyramid.")}
            model.encoder.load_state_dict(trunk, strict=False)
        model.plan = plan
        if model.config.encoder_source == "shared":
            return _attach_shared_encoder(model, path, merge_adapter=merge_adapter)
        return model


def _attach_shared_encoder(model: RadFMRegistration, path: Path, *, merge_adapter: bool) -> Any:
    """Put the shared CNN's weights into ``model.encoder`` (file SHA checked), then its adapter."""
    from radfm.starter import load_starter_encoder, starter_encoder_path

    sha = _file_sha256(starter_encoder_path("cnn") / "model.safetensors")
    want = model.config.encoder_sha256
    if want and sha != want:
        raise ConfigError(
            f"{path} was trained on another shared encoder (sha256 {want[:12]}…, installed "
            f"radfm/starter/cnn_encoder is {sha[:12]}…).",
            "Retrain the registration model on the installed encoder "
            "(radfm train registration -c configs/registration/shared-cnn.yaml).")
    model.encoder.load_state_dict(load_starter_encoder(kind="cnn").state_dict())
    adapter = path / ADAPTER_SUBDIR
    if not adapter.is_dir():
        return model.eval()
    from radfm.adapters import load_encoder_adapter

    plan = model.plan
    loaded = load_encoder_adapter(model, adapter, merge=merge_adapter)
    (loaded.get_base_model() if hasattr(loaded, "peft_config") else loaded).plan = plan
    return loaded


def save_registration(model: Any, save_directory: str | Path) -> Path:
    """Save a registration model, plain or wrapped by peft (LoRA on the shared encoder).

    The model folder gets config.json + model.safetensors (no shared-encoder weights) +
    preprocess_plan.json; a peft model's encoder LoRA goes APART into ``encoder_adapter/``
    (peft layout + ``radfm_adapter.json`` with the encoder's SHA-256, ``radfm.adapters``).
    """
    import shutil

    out = Path(save_directory)
    is_peft = hasattr(model, "peft_config")
    base = model.get_base_model() if is_peft else model
    base.save_pretrained(out)
    adapter = out / ADAPTER_SUBDIR
    if is_peft:
        from radfm.adapters import save_encoder_adapter

        if base.config.encoder_source != "shared":
            raise ConfigError("an adapter saved apart needs the shared encoder (encoder_source='shared').")
        save_encoder_adapter(model, adapter, task=REG_TASK, base_encoder="radfm/starter/cnn_encoder")
    elif adapter.is_dir():  # a stale adapter would be applied to this model on load
        shutil.rmtree(adapter)
    return out


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
