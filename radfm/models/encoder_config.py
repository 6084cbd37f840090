"""Configuration of the shared 3D encoder (:class:`~radfm.models.encoder.RadFMEncoder`).

One config class for every size; the named presets below set the size. A checkpoint directory
holds this config as ``config.json`` beside ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from radfm.errors import ConfigError

__all__ = ["ARCHITECTURES", "ENCODER_PRESETS", "MODALITY_IDS", "RadFMEncoderConfig"]

#: Modality ids understood by the modality embedding (``modality_ids`` in the encoder's forward).
MODALITY_IDS: dict[str, int] = {"CT": 0, "MR": 1, "other": 2}

#: Named sizes. Parameter counts are for ``in_channels=1`` with the default pyramid
#: (encoder trunk / feature pyramid); tests/models/test_encoder.py checks their ranges.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # tests and examples: 0.20 M trunk + 0.05 M pyramid
    "tiny": {"hidden_size": 64, "num_layers": 4, "num_heads": 4, "patch_size": (4, 4, 4)},
    # CPU fine-tuning and inference (ViT-S widths): 22.9 M trunk + 1.7 M pyramid
    "small": {"hidden_size": 384, "num_layers": 12, "num_heads": 6, "patch_size": (16, 16, 16)},
    # ViT-B: 88.2 M + 6.7 M
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "patch_size": (16, 16, 16)},
    # ViT-L: 306.5 M + 11.9 M
    "large": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "patch_size": (16, 16, 16)},
    # residual CNN trunks (architecture="cnn"): features at strides 1, 2, 4, 8, 16
    # tests: 0.17 M
    "cnn-tiny": {"architecture": "cnn", "cnn_channels": (8, 16, 24, 32, 48), "cnn_blocks": (1, 1, 1, 1, 1)},
    # the shipped starter encoder: 2.7 M
    "cnn-small": {"architecture": "cnn", "cnn_channels": (16, 32, 64, 96, 128), "cnn_blocks": (1, 1, 2, 2, 2)},
    # GPU: 19.6 M
    "cnn-base": {"architecture": "cnn", "cnn_channels": (32, 64, 128, 256, 320), "cnn_blocks": (1, 2, 2, 3, 3)},
}

ARCHITECTURES = ("vit", "cnn")

NUM_PYRAMID_LEVELS = 4


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(value)
    if len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{name} must be one positive int or three (d, h, w), got {value!r}.")
    return value  # type: ignore[return-value]


def up_stage_factors(patch_size: tuple[int, int, int], num_stages: int = 2) -> list[tuple[int, int, int]]:
    """Per-axis factor (1 or 2) of each x2 upsampling stage of the feature pyramid.

    Why per axis: an anisotropic patch such as ``(2, 16, 16)`` cannot be upsampled x4 along z
    without going finer than the input voxels, and a patch of 6 cannot be halved twice to an
    integer stride. A stage doubles an axis only while the stride stays an integer >= 1.
    """
    factors, cum = [], [1, 1, 1]
    for _ in range(num_stages):
        f = tuple(2 if p % (c * 2) == 0 else 1 for p, c in zip(patch_size, cum))
        cum = [c * fi for c, fi in zip(cum, f)]
        factors.append(f)
    return factors  # type: ignore[return-value]


@strict
class RadFMEncoderConfig(PreTrainedConfig):
    r"""Configuration of the shared 3D ViT encoder.

    Presets (``RadFMEncoderConfig.from_preset(name, **overrides)``; counts for 1 input channel,
    trunk + feature pyramid):

    ========  ======  ======  =====  ============  ===========================
    name      hidden  layers  heads  patch         parameters
    ========  ======  ======  =====  ============  ===========================
    tiny          64       4      4  (4, 4, 4)     0.20 M + 0.05 M  (tests)
    small        384      12      6  (16, 16, 16)  22.9 M + 1.7 M   (CPU)
    base         768      12     12  (16, 16, 16)  88.2 M + 6.7 M
    large       1024      24     16  (16, 16, 16)  306.5 M + 11.9 M
    ========  ======  ======  =====  ============  ===========================

    ``RadFMEncoderConfig()`` without arguments is the "small" preset.

    Args:
        in_channels: input channels; several MR sequences (T1, T2, FLAIR …) are several channels.
        patch_size: ``(pd, ph, pw)`` voxels per token, anisotropic allowed (e.g. ``(4, 16, 16)``
            for thick-slice scans); one int means a cube. The token grid is the input size
            divided by it.
        hidden_size, num_layers, num_heads, mlp_ratio, qkv_bias: transformer size (ViT naming);
            ``hidden_size`` must be divisible by ``num_heads``.
        drop_path_rate: stochastic-depth rate of the last block (linearly increasing from 0).
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the normal initialisation of the class token.
        out_indices: four block indices (0-based, negatives allowed) whose outputs feed the
            feature pyramid, finest level first; ``None`` = four evenly spaced blocks ending with
            the last one (12 layers -> 2, 5, 8, 11, as UNETR/ViTDet).
        pyramid_channels: channels of the four pyramid maps (finest first), one int for all, or
            ``None`` = ``(hidden/4, hidden/2, hidden, hidden)`` (fewer channels where the maps are
            large, which keeps the x4 map cheap on CPU).
        use_cls_token: prepend a learned class token (dense tasks do not need one).
        modality_embedding: add a learned per-modality vector (``MODALITY_IDS``: CT=0, MR=1,
            other=2) to every token, so one encoder can tell CT from MR intensities.
        num_modalities: size of that embedding table.
        learned_pos_embed: add a learned positional table, stored at ``pos_embed_ref_grid`` and
            resampled trilinearly to the actual grid, on top of the fixed 3D sin-cos code.
        pos_embed_ref_grid: grid ``(gd, gh, gw)`` at which the learned table is stored.
        architecture: ``"vit"`` (the fields above) or ``"cnn"``: a residual CNN trunk
            (:mod:`radfm.models.cnn`) with ``cnn_channels`` (width per stage, finest first, stage
            ``s`` at stride ``2**s``) and ``cnn_blocks`` (residual blocks per stage). For a CNN the
            patch size is the total stride, ``hidden_size`` the deepest width, the feature pyramid
            the four finest stages (strides 1, 2, 4, 8) and the tokens the deepest stage; the
            ViT-only fields are ignored.
    """

    model_type = "radfm_encoder"
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_channels": "in_channels",
    }

    in_channels: int = 1
    patch_size: int | list[int] | tuple[int, ...] = (16, 16, 16)
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    out_indices: list[int] | tuple[int, ...] | None = None
    pyramid_channels: int | list[int] | tuple[int, ...] | None = None
    use_cls_token: bool = False
    modality_embedding: bool = True
    num_modalities: int = 3
    learned_pos_embed: bool = False
    pos_embed_ref_grid: int | list[int] | tuple[int, ...] = (8, 8, 8)
    architecture: str = "vit"
    cnn_channels: list[int] | tuple[int, ...] | None = None
    cnn_blocks: list[int] | tuple[int, ...] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # Normalise here (JSON gives lists, users give ints) so the model reads one form only.
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}.")
        if self.architecture == "cnn":
            self._post_init_cnn()
            super().__post_init__(**kwargs)
            return
        self.patch_size = _triple(self.patch_size, "patch_size")
        self.pos_embed_ref_grid = _triple(self.pos_embed_ref_grid, "pos_embed_ref_grid")
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}.")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(
                f"num_layers and num_heads must be >= 1, got {self.num_layers}, {self.num_heads}."
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        if self.hidden_size < 8:
            raise ConfigError(f"hidden_size must be >= 8, got {self.hidden_size}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if self.out_indices is None:
            n = self.num_layers
            self.out_indices = [max(round((i + 1) * n / NUM_PYRAMID_LEVELS) - 1, 0) for i in range(4)]
        idx = [int(i) + self.num_layers if int(i) < 0 else int(i) for i in self.out_indices]
        if len(idx) != NUM_PYRAMID_LEVELS or not all(0 <= i < self.num_layers for i in idx):
            raise ConfigError(
                f"out_indices must be {NUM_PYRAMID_LEVELS} block indices in [-{self.num_layers}, "
                f"{self.num_layers}), got {self.out_indices!r}."
            )
        self.out_indices = idx
        if self.pyramid_channels is None:
            h = self.hidden_size
            self.pyramid_channels = [max(h // 4, 1), max(h // 2, 1), h, h]
        elif isinstance(self.pyramid_channels, int):
            self.pyramid_channels = [self.pyramid_channels] * NUM_PYRAMID_LEVELS
        self.pyramid_channels = [int(c) for c in self.pyramid_channels]
        if len(self.pyramid_channels) != NUM_PYRAMID_LEVELS or min(self.pyramid_channels) < 1:
            raise ConfigError(
                f"pyramid_channels must be one int or {NUM_PYRAMID_LEVELS} positive ints, "
                f"got {self.pyramid_channels!r}."
            )
        if self.modality_embedding and self.num_modalities < 1:
            raise ConfigError(f"num_modalities must be >= 1, got {self.num_modalities}.")
        super().__post_init__(**kwargs)

    def _post_init_cnn(self) -> None:
        """A CNN trunk: the "patch" is its total stride, ``hidden_size`` its deepest width."""
        chans = [int(c) for c in (self.cnn_channels or ENCODER_PRESETS["cnn-small"]["cnn_channels"])]
        blocks = [int(b) for b in (self.cnn_blocks or [1] * len(chans))]
        if len(chans) < 4 or len(blocks) != len(chans) or min(chans) < 1 or min(blocks) < 0:
            raise ConfigError(f"cnn_channels needs >= 4 positive widths and cnn_blocks one count per stage, got "
                              f"{self.cnn_channels!r} / {self.cnn_blocks!r}.")
        self.cnn_channels, self.cnn_blocks = chans, blocks
        self.patch_size = (2 ** (len(chans) - 1),) * 3
        self.pos_embed_ref_grid = _triple(self.pos_embed_ref_grid, "pos_embed_ref_grid")
        self.hidden_size = chans[-1]
        self.num_heads = 1
        self.num_layers = len(chans)
        self.out_indices = list(range(NUM_PYRAMID_LEVELS))
        self.pyramid_channels = chans[:NUM_PYRAMID_LEVELS]
        self.use_cls_token = False
        self.learned_pos_embed = False
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}.")

    # --- derived quantities -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pyramid_strides(self) -> list[tuple[int, int, int]]:
        """Stride in input voxels ``(sd, sh, sw)`` of each pyramid map, finest first.

        Nominally patch/4, patch/2, patch, 2*patch; along an axis whose patch size cannot be
        halved (see :func:`up_stage_factors`) the finer levels keep the coarser stride.
        """
        if self.architecture == "cnn":
            return [(2**i,) * 3 for i in range(NUM_PYRAMID_LEVELS)]  # type: ignore[misc]
        p = self.patch_size
        f1, f2 = up_stage_factors(p)
        s2 = tuple(pi // (a * b) for pi, a, b in zip(p, f1, f2))
        s1 = tuple(pi // a for pi, a in zip(p, f1))
        return [s2, s1, tuple(p), tuple(2 * pi for pi in p)]  # type: ignore[list-item]

    # --- presets ------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RadFMEncoderConfig:
        """Config of a named size (``tiny``, ``small``, ``base``, ``large``) with overrides.

        Unknown preset names and unknown override keys raise :class:`~radfm.errors.ConfigError`
        (a typo must not silently become an ignored attribute).
        """
        if name not in ENCODER_PRESETS:
            raise ConfigError(
                f"unknown encoder preset {name!r}.", f"Choose one of {sorted(ENCODER_PRESETS)}."
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown RadFMEncoderConfig field(s) {unknown}.")
        return cls(**{**ENCODER_PRESETS[name], **overrides})
