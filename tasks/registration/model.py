"""The registration network: shared encoder (siamese) + coarse-to-fine field decoder.

Read top to bottom: the conv stem, one decoder level, the model, save/load (the config: ``config.py``).

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
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from radfm.adapters.shared_encoder import ADAPTER_SUBDIR, file_sha256
from radfm.errors import ConfigError, InputError
from radfm.models import RadFMEncoder
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.registration import functional as RF
from radfm.tasks.registration.config import RadFMRegConfig, default_encoder_config

__all__ = ["ADAPTER_SUBDIR", "REG_TASK", "RadFMRegConfig", "RadFMRegistration", "RegistrationOutput",
           "default_encoder_config", "save_registration"]

#: Folder (inside a registration model directory) of the shared encoder's LoRA adapter (peft layout).
#: Task name written into the adapter's ``radfm_adapter.json``.
REG_TASK = "registration"

#: Decoder levels with fewer grid voxels than this run in float32 even under bf16 autocast.
_BF16_MIN_VOXELS = 16**3


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
                                encoder_sha256=file_sha256(starter_encoder_path() / "model.safetensors"),
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
        from radfm.adapters.shared_encoder import build_on_shared_encoder

        return build_on_shared_encoder(cls, RadFMRegConfig, **config_kwargs)

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

            sha = file_sha256(starter_encoder_path() / "model.safetensors")
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
    from radfm.adapters.shared_encoder import attach_shared_encoder

    return attach_shared_encoder(model, path, expected_sha256=model.config.encoder_sha256,
                                 retrain_hint="Retrain the registration model on the installed encoder "
                                 "(radfm train registration -c configs/registration/shared-cnn.yaml).",
                                 merge_adapter=merge_adapter)


def save_registration(model: Any, save_directory: str | Path) -> Path:
    """Save a registration model, plain or wrapped by peft (LoRA on the shared encoder).

    The model folder gets config.json + model.safetensors (no shared-encoder weights) +
    preprocess_plan.json; a peft model's encoder LoRA goes APART into ``encoder_adapter/``
    (peft layout + ``radfm_adapter.json`` with the encoder's SHA-256, ``radfm.adapters``).
    """
    from radfm.adapters.shared_encoder import save_with_adapter_apart

    base = model.get_base_model() if hasattr(model, "peft_config") else model
    if hasattr(model, "peft_config") and base.config.encoder_source != "shared":
        raise ConfigError("an adapter saved apart needs the shared encoder (encoder_source='shared').")
    return save_with_adapter_apart(model, save_directory, task=REG_TASK)
