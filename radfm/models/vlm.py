"""The report model: shared 3D encoder -> volume resampler -> any causal LLM (LLaVA-style).

Why this shape (transformers' LLaVA): the prompt holds ``Q`` placeholder tokens where the
volume goes; ``get_volume_features`` turns a volume into ``Q`` LLM embeddings, and
``build_inputs_embeds`` scatters them over the placeholders' embeddings after checking that
their counts agree. Everything after that is the unmodified LLM, so any Hugging Face causal LM
(Llama, Qwen2, Mistral, Phi …) can be plugged in, generation is the LLM's own
``generate(inputs_embeds=…)``, and a serving engine that accepts prompt embeddings (vLLM
``--enable-prompt-embeds``) can run the LLM part unchanged.

Shapes: ``pixel_values (B, C, D, H, W)``, ``input_ids (B, L)``, volume embeddings
``(B, Q, H_llm)``, inputs embeddings ``(B, L, H_llm)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from radfm.errors import ConfigError, InputError
from radfm.models.bridge import VolumeResampler
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.models.radfm_config import RadFMBridgeConfig, RadFMConfig

__all__ = ["RadFMForReportGeneration"]

log = logging.getLogger(__name__)


class RadFMForReportGeneration(PreTrainedModel):
    """Encoder + bridge + causal LLM drafting reports from a volume and/or a text prompt.

    Submodules: ``encoder`` (:class:`RadFMEncoder`), ``bridge`` (:class:`VolumeResampler`),
    ``language_model`` (``AutoModelForCausalLM`` of ``config.text_config``). Save/load the whole
    model with ``save_pretrained`` / ``from_pretrained`` (one safetensors file); build one around
    an existing LLM checkpoint with :meth:`from_parts`.
    """

    config_class = RadFMConfig
    base_model_prefix = "radfm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(
        self,
        config: RadFMConfig,
        *,
        encoder: RadFMEncoder | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else RadFMEncoder(config.vision_config)
        self.bridge = VolumeResampler(config.bridge_config)
        if language_model is not None and language_model.config._attn_implementation is None:
            # Building the composite config resets sub-configs' attention implementation (a
            # transformers setter recurses into sub-configs); a pre-built LLM must keep a real one.
            language_model.config._attn_implementation_internal = (
                "sdpa" if getattr(language_model, "_supports_sdpa", False) else "eager")
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing of its own: encoder, bridge and LLM initialise themselves (smart_apply)."""

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any,
                        **kwargs: Any) -> RadFMForReportGeneration:
        """``PreTrainedModel.from_pretrained`` that refuses a checkpoint lacking any weight.

        Why: transformers initialises missing weights randomly and only prints a MISSING table, so
        a report model whose encoder was not saved would draft from noise. Raises ``ConfigError``
        naming the folder and the missing keys. ``output_loading_info=True`` is honoured.
        """
        want_info = bool(kwargs.pop("output_loading_info", False))
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        missing = sorted(k for k in info["missing_keys"] if k not in tied)
        if missing:
            parts = sorted({k.split(".", 1)[0] for k in missing})
            hint = ("Save the whole model with save_pretrained, or load a report model trained on the "
                    "starter encoder with radfm.tasks.report.model.load_report_model (it records where "
                    "its encoder comes from)." if "encoder" in parts else
                    "Save the whole model with save_pretrained.")
            shown = ", ".join(missing[:10]) + (f" … ({len(missing)} in all)" if len(missing) > 10 else "")
            raise ConfigError(f"{pretrained_model_name_or_path} lacks the weights of {'/'.join(parts)} "
                              f"(missing keys: {shown}); they would be left random.", hint)
        return (model, info) if want_info else model

    # --- building from existing checkpoints --------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        language_model: str | Path | PreTrainedModel,
        *,
        encoder: str | Path | RadFMEncoder | RadFMEncoderConfig | None = None,
        bridge_config: RadFMBridgeConfig | dict[str, Any] | None = None,
        volume_token_id: int | None = None,
        dtype: torch.dtype | str | None = None,
        **llm_kwargs: Any,
    ) -> RadFMForReportGeneration:
        """A report model around an existing LLM (hub id or local folder) and encoder.

        Args:
            language_model: any causal-LM checkpoint ``AutoModelForCausalLM.from_pretrained``
                can read (e.g. a local medical LLM folder), or a loaded model.
            encoder: a RadFM encoder checkpoint folder, a loaded encoder, a config for a fresh
                one, or ``None`` for the default ("small") config.
            bridge_config: resampler settings (``num_queries`` …); widths are filled in.
            volume_token_id: id of the volume placeholder in the tokenizer you will use (after
                ``tokenizer.add_special_tokens``; resize the LLM's embeddings if it grew).
            dtype: dtype for the LLM weights (``"auto"`` keeps the checkpoint's).
            llm_kwargs: passed to ``from_pretrained`` (``attn_implementation`` …).
        """
        if isinstance(language_model, PreTrainedModel):
            lm = language_model
        else:
            if dtype is not None:
                llm_kwargs["dtype"] = dtype
            lm = AutoModelForCausalLM.from_pretrained(str(language_model), **llm_kwargs)
        if isinstance(encoder, RadFMEncoder):
            enc = encoder
        elif isinstance(encoder, RadFMEncoderConfig):
            enc = RadFMEncoder(encoder)
        elif encoder is None:
            enc = RadFMEncoder(RadFMEncoderConfig())
        else:
            enc = RadFMEncoder.from_pretrained(str(encoder))
        if isinstance(bridge_config, dict):
            bridge_config = RadFMBridgeConfig(**bridge_config)
        bridge_config = bridge_config or RadFMBridgeConfig()
        # Widths come from the parts; a config copied from another model would clash.
        bridge_config.vision_hidden_size = None
        bridge_config.llm_hidden_size = None
        impl = lm.config._attn_implementation
        config = RadFMConfig(vision_config=enc.config, bridge_config=bridge_config, text_config=lm.config,
                             volume_token_id=volume_token_id)
        lm.config._attn_implementation_internal = impl  # keep the LLM's own attention implementation
        return cls(config, encoder=enc, language_model=lm)

    # --- embeddings plumbing (so resize_token_embeddings & co. work on the composite) -----------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # --- the three steps ---------------------------------------------------------------------
    def get_volume_features(
        self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Volumes -> LLM-space embeddings: ``(B, C, D, H, W)`` -> ``(B, Q, H_llm)``.

        ``(D, H, W)`` must be multiples of the encoder's patch size (``PreprocessPlan`` pads).
        """
        out = self.encoder(pixel_values, modality_ids=modality_ids, output_pyramid=False)
        return self.bridge(out.last_hidden_state, grid_size=out.grid_size)

    def volume_placeholder_mask(self, input_ids: torch.Tensor, num_features: int) -> torch.Tensor:
        """``(B, L)`` bool mask of placeholder positions, after checking their count.

        Raises ``InputError`` unless the prompt holds exactly ``num_features`` placeholders and
        every row holds a whole number of volumes (``Q`` each).
        """
        vid = self.config.volume_token_id
        if vid is None:
            raise ConfigError("config.volume_token_id is not set.",
                              "Set it to the tokenizer's id of the volume placeholder token.")
        mask = input_ids == vid
        n_tokens = int(mask.sum())
        if n_tokens != num_features:
            q = self.config.num_volume_tokens
            raise InputError(
                f"the prompt holds {n_tokens} volume placeholder token(s) but {num_features} volume "
                f"feature(s) were given ({num_features // max(q, 1)} volume(s) x {q}).",
                f"Put exactly {q} '{self.config.volume_token}' tokens in the prompt per volume "
                "(radfm.tasks.report.prompting.build_prompt does).",
            )
        per_row = mask.sum(dim=1)
        if bool((per_row % self.config.num_volume_tokens).any()):
            raise InputError(
                f"rows hold {per_row.tolist()} placeholders; each volume needs {self.config.num_volume_tokens}."
            )
        return mask

    def build_inputs_embeds(
        self, input_ids: torch.Tensor, volume_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings with the volume features written over the placeholders.

        Args:
            input_ids: ``(B, L)``.
            volume_embeds: ``(V, Q, H_llm)`` for the ``V`` volumes of the batch, in the order
                their placeholders appear (row by row), or ``None`` for a text-only batch.
        Returns:
            ``(B, L, H_llm)``.
        """
        embed = self.get_input_embeddings()
        vid = self.config.volume_token_id
        if volume_embeds is None:
            if vid is not None and bool((input_ids == vid).any()):
                raise InputError("the prompt holds volume placeholders but no volume was given.",
                                 "Pass pixel_values (or volume_embeds), or build a text-only prompt.")
            return embed(input_ids)
        flat = volume_embeds.reshape(-1, volume_embeds.shape[-1])
        mask = self.volume_placeholder_mask(input_ids, flat.shape[0])
        # The placeholder id is looked up like any token, then overwritten (as LLaVA does).
        embeds = embed(input_ids)
        return embeds.masked_scatter(mask[..., None].to(embeds.device), flat.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
        volume_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **lm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """LLM forward over prompt + volume; with ``labels`` the next-token loss.

        ``labels (B, L)``: ``config.ignore_index`` (-100) where no loss is wanted (prompt,
        padding); placeholder positions are always excluded. The LLM shifts labels itself.
        """
        if pixel_values is not None and volume_embeds is not None:
            raise InputError("give pixel_values or volume_embeds, not both.")
        if pixel_values is not None:
            volume_embeds = self.get_volume_features(pixel_values, modality_ids)
        inputs_embeds = self.build_inputs_embeds(input_ids, volume_embeds)
        if labels is not None and self.config.volume_token_id is not None:
            labels = labels.masked_fill(input_ids == self.config.volume_token_id, self.config.ignore_index)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   **lm_kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
        volume_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Draft text: the LLM's ``generate(inputs_embeds=…)``; greedy unless told otherwise.

        Returns only the generated ids ``(B, T_new)`` (with ``inputs_embeds`` the LLM returns
        no prompt ids). Left-pad batched prompts (``attention_mask`` 0 on the padding).
        """
        if pixel_values is not None:
            volume_embeds = self.get_volume_features(pixel_values, modality_ids)
        inputs_embeds = self.build_inputs_embeds(input_ids, volume_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        generate_kwargs.setdefault("do_sample", False)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            **generate_kwargs)

    @torch.no_grad()
    def prompt_embeds(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 prompt embeddings ``(L, H_llm)`` of ONE prompt, for a serving backend.

        ``input_ids (L,)`` or ``(1, L)``; the result is what an ``LLMBackend`` (vLLM prompt
        embeddings, or transformers ``generate(inputs_embeds=…)``) takes.
        """
        ids = input_ids.reshape(1, -1)
        vol = None
        if pixel_values is not None:
            vol = self.get_volume_features(pixel_values, modality_ids)
        return self.build_inputs_embeds(ids, vol)[0].float()
