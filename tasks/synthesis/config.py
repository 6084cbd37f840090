"""Config of the synthesis network (:class:`RadFMSynthConfig`); design notes in ``model.py``.

Apart from ``model.py`` so that a config (and its preprocess plan) can be read and validated
without building the network.
"""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from radfm.errors import ConfigError
from radfm.models import RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan

__all__ = ["HU_RANGE", "TASKS", "RadFMSynthConfig"]

#: Synthesis tasks and the input modality each one accepts.
TASKS: dict[str, str] = {"lowdose": "CT"}
#: The plan's linear window: the model reads HU in this range back exactly (nothing is squeezed).
HU_RANGE = (-1024.0, 3072.0)


@strict
class RadFMSynthConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMSynthesis`.

    Args:
        encoder_config: a CNN :class:`RadFMEncoderConfig` (``architecture="cnn"``) or its dict;
            default: the "cnn-tiny" preset (tests); the shipped model uses the shared encoder's config.
        decoder_channels: width of the decoder level at strides 8, 4, 2, 1 (coarsest first); the
            stride-16 encoder map is the decoder's start.
        task: "lowdose" (CT → CT, residual denoising).
        residual: output = input + predicted correction (the identity at initialisation).
        correction_scale_hu: HU per unit of the last conv's output (keeps its weights O(1)).
        window: training/inference window ``(D, H, W)`` voxels on the input's own grid
            (multiples of 16); inference slides it with overlap.
        encoder_source: ``"shared"``: radfm's shared CNN (``radfm/starter/cnn_encoder``), NOT stored
            in the checkpoint (referenced by ``encoder_sha256``), frozen or LoRA-adapted with the
            adapter saved apart in ``encoder_adapter/``; ``None``: every weight in the checkpoint.
        encoder_sha256: SHA-256 of the shared encoder's ``model.safetensors`` it was trained on.
    """

    model_type = "radfm_synthesis"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=RadFMEncoderConfig),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    decoder_channels: list[int] | tuple[int, ...] = (48, 32, 24, 16)
    task: str = "lowdose"
    residual: bool = True
    correction_scale_hu: float = 100.0
    window: list[int] | tuple[int, ...] = (16, 96, 96)
    encoder_source: str | None = None
    encoder_sha256: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.encoder_config is None:
            self.encoder_config = RadFMEncoderConfig.from_preset("cnn-tiny")
        super().__post_init__(**kwargs)
        enc = self.encoder_config
        if getattr(enc, "architecture", "vit") != "cnn" or len(enc.cnn_channels) != 5:
            raise ConfigError("synthesis needs a 5-stage CNN encoder (strides 1-16), e.g. the shared "
                              "radfm/starter/cnn_encoder or RadFMEncoderConfig.from_preset('cnn-tiny').")
        self.decoder_channels = [int(c) for c in self.decoder_channels]
        if len(self.decoder_channels) != 4 or min(self.decoder_channels) < 1:
            raise ConfigError(f"decoder_channels needs 4 positive widths (strides 8, 4, 2, 1), "
                              f"got {self.decoder_channels}.")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {sorted(TASKS)}, got {self.task!r}.")
        self.window = [int(w) for w in self.window]
        if len(self.window) != 3 or any(w < 16 or w % 16 for w in self.window):
            raise ConfigError(f"window must be 3 multiples of 16 (D, H, W), got {self.window}.")
        if self.encoder_source not in (None, "shared"):
            raise ConfigError(f"encoder_source must be None or 'shared', got {self.encoder_source!r}.")

    @property
    def modality(self) -> str:
        """The input modality the task accepts."""
        return TASKS[self.task]

    def default_plan(self) -> PreprocessPlan:
        """Native grid (no resampling: noise lives at the scan's own voxel size), linear HU window
        ``HU_RANGE`` to [-1, 1] (invertible, unlike the soft-tissue tanh the encoder sees), pad to 16."""
        return PreprocessPlan(
            modality=self.modality, target_spacing=None, normalization="ct_window", ct_window=HU_RANGE,
            patch_size=tuple(self.window), pad_multiple=(16, 16, 16),
            notes={"task": f"synthesis/{self.task}",
                   "why": "native grid; the model maps the window back to HU and runs the encoder on its "
                          "soft-tissue map; output = input + correction, in HU"},
        )
