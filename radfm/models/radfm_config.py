"""Configurations of the vision-language bridge and of the composite report model.

``RadFMConfig`` follows transformers' LLaVA config: one composite config holding
``vision_config`` (the shared 3D encoder), ``bridge_config`` (the volume resampler) and
``text_config`` (any causal LM: Llama, Qwen2, Mistral, Phi … resolved through ``AutoConfig``
by its ``model_type``), plus the placeholder token that marks where volume features go in
the prompt. A checkpoint directory holds it as ``config.json``.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from radfm.errors import ConfigError
from radfm.models.encoder_config import RadFMEncoderConfig

__all__ = ["DEFAULT_VOLUME_TOKEN", "RadFMBridgeConfig", "RadFMConfig"]

#: Placeholder text for one volume feature in a prompt (repeated ``num_queries`` times).
DEFAULT_VOLUME_TOKEN = "<volume>"


@strict
class RadFMBridgeConfig(PreTrainedConfig):
    r"""Configuration of :class:`~radfm.models.bridge.VolumeResampler` (perceiver / Q-former style).

    Why a resampler and not LLaVA's per-token MLP: a CT gives hundreds to thousands of encoder
    tokens and their number changes with the volume's size; ``num_queries`` learned queries
    cross-attend to all of them, so the LLM always sees the same short, fixed-length prefix.

    Args:
        num_queries: learned queries = volume tokens handed to the LLM (``Q``).
        hidden_size: width of the resampler (queries, attention, MLP).
        num_layers: cross-attention + MLP layers.
        num_heads: attention heads (``hidden_size`` must divide by it).
        mlp_ratio: MLP width / ``hidden_size``.
        vision_hidden_size: width of the encoder tokens; ``RadFMConfig`` fills it from the encoder.
        llm_hidden_size: output width = the LLM's embedding width; ``RadFMConfig`` fills it.
        use_positions: add a 3D sin-cos code of each encoder token's position (normalised to
            the grid, so "upper left" means the same on every volume size) to the keys.
        position_scale: positions in [0, 1] are multiplied by this before the sin-cos code;
            it sets the finest spatial frequency the keys can resolve.
        layer_norm_eps, initializer_range: as usual.
    """

    model_type = "radfm_bridge"

    num_queries: int = 32
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float | int = 4.0
    vision_hidden_size: int | None = None
    llm_hidden_size: int | None = None
    use_positions: bool = True
    position_scale: float | int = 32.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_queries < 1 or self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(
                f"num_queries, num_layers and num_heads must be >= 1, got {self.num_queries}, "
                f"{self.num_layers}, {self.num_heads}."
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"bridge hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        if self.use_positions and self.hidden_size < 6:
            raise ConfigError(f"bridge hidden_size must be >= 6 for 3D positions, got {self.hidden_size}.")
        super().__post_init__(**kwargs)


@strict
class RadFMConfig(PreTrainedConfig):
    r"""Composite configuration of :class:`~radfm.models.vlm.RadFMForReportGeneration`.

    Args:
        vision_config: :class:`RadFMEncoderConfig` (or its dict); default: the "small" preset.
        bridge_config: :class:`RadFMBridgeConfig` (or its dict); its ``vision_hidden_size`` and
            ``llm_hidden_size`` are filled from the other two configs.
        text_config: config of any causal LM (or its dict with ``model_type``, resolved by
            ``AutoConfig``); default: a Llama config.
        volume_token: placeholder text of one volume feature in prompts.
        volume_token_id: its id in the tokenizer (must be set before the model is used; the
            tokenizer that adds the token knows it).
        ignore_index: label value that carries no loss (prompt and volume positions).
    """

    model_type = "radfm"
    attribute_map = {"image_token_id": "volume_token_id"}  # noqa: RUF012 - transformers' ClassVar convention
    sub_configs_defaults = {  # noqa: RUF012
        "vision_config": SubConfigSpec(config_class=RadFMEncoderConfig),
        "bridge_config": SubConfigSpec(config_class=RadFMBridgeConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    bridge_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    volume_token: str = DEFAULT_VOLUME_TOKEN
    volume_token_id: int | None = None
    ignore_index: int = -100
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # As LLaVA: tying lives in the text config of most released LLMs; mirror it so the
        # composite model ties the LLM's lm_head to its embeddings when the LLM does.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        vis_h = self.vision_config.hidden_size
        llm_h = self.text_config.hidden_size
        b = self.bridge_config
        for name, want in (("vision_hidden_size", vis_h), ("llm_hidden_size", llm_h)):
            have = getattr(b, name)
            if have is not None and have != want:
                raise ConfigError(
                    f"bridge_config.{name} is {have} but the {'encoder' if 'vision' in name else 'LLM'} "
                    f"has hidden size {want}.",
                    "Leave it unset (None); RadFMConfig fills it from the vision/text configs.",
                )
            setattr(b, name, want)
        if self.volume_token_id is not None and self.volume_token_id < 0:
            raise ConfigError(f"volume_token_id must be >= 0, got {self.volume_token_id}.")

    @property
    def num_volume_tokens(self) -> int:
        """Placeholders per volume in a prompt = the resampler's ``num_queries``."""
        return int(self.bridge_config.num_queries)
