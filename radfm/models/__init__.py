"""Model definitions of the core: the shared encoder and the vision-language bridge."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from radfm.models.bridge import VolumeResampler
from radfm.models.channels import expand_input_channels
from radfm.models.encoder import RadFMEncoder, RadFMEncoderOutput
from radfm.models.encoder_config import ENCODER_PRESETS, MODALITY_IDS, RadFMEncoderConfig
from radfm.models.encoder_input import pad_to_patch_multiple, random_keep_indices
from radfm.models.pos_embed import interpolate_pos_table, sincos_pos_embed_3d
from radfm.models.radfm_config import DEFAULT_VOLUME_TOKEN, RadFMBridgeConfig, RadFMConfig
from radfm.models.vlm import RadFMForReportGeneration

# So that AutoConfig / AutoModel (and composite configs naming model_type "radfm_encoder") find it.
AutoConfig.register(RadFMEncoderConfig.model_type, RadFMEncoderConfig, exist_ok=True)
AutoModel.register(RadFMEncoderConfig, RadFMEncoder, exist_ok=True)
AutoConfig.register(RadFMBridgeConfig.model_type, RadFMBridgeConfig, exist_ok=True)
AutoModel.register(RadFMBridgeConfig, VolumeResampler, exist_ok=True)
AutoConfig.register(RadFMConfig.model_type, RadFMConfig, exist_ok=True)

__all__ = [
    "DEFAULT_VOLUME_TOKEN",
    "ENCODER_PRESETS",
    "MODALITY_IDS",
    "RadFMBridgeConfig",
    "RadFMConfig",
    "RadFMEncoder",
    "RadFMEncoderConfig",
    "RadFMEncoderOutput",
    "RadFMForReportGeneration",
    "VolumeResampler",
    "expand_input_channels",
    "interpolate_pos_table",
    "pad_to_patch_multiple",
    "random_keep_indices",
    "sincos_pos_embed_3d",
]
