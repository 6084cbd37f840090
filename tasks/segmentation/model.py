"""The prompt segmenter: shared encoder + neck + prompt encoder + mask decoder, assembled here.

Read top to bottom: config, outputs, the model (embedding once, decoding per prompt), saving and
loading. As in segment-anything, the model is built from its parts in the constructor and the
expensive part (:meth:`RadFMPromptSegmenter.get_image_embeddings`) is separate from the cheap part
(:meth:`RadFMPromptSegmenter.decode`), so a predictor can cache the first and answer many clicks.

Shapes: model input ``(B, C, D, H, W)`` (``(D, H, W)`` multiples of the encoder patch); prompts in
continuous voxel indices ``(z, y, x)`` of that input (``point_coords (B, N, 3)``, ``point_labels
(B, N)`` 1 = foreground / 0 = background / -1 = padding, ``boxes (B, 6)`` inclusive corners
``(z0, y0, x0, z1, y1, x1)``, ``mask_inputs (B, 1, 4gd, 4gh, 4gw)`` low-res logits).

Saving: ``save_pretrained(dir)`` writes ``config.json`` + ``model.safetensors`` + the preprocessing
plan (``preprocess_plan.json``). With ``include_encoder=False`` the shared encoder's weights are left
out (``config.encoder_source`` says where they come from, e.g. ``"starter"``): the shipped model is
then a few MB of decoder and LoRA weights over the starter encoder the package already ships.
"""

from __future__ import annotations

import logging
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
from radfm.models.encoder import LayerNorm3d, RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.preprocess.plan import PLAN_FILENAME, PreprocessPlan
from radfm.tasks.segmentation.mask_decoder import MaskDecoder3d, TwoWayTransformer
from radfm.tasks.segmentation.prompt_encoder import (
    PositionEmbeddingRandom3d,
    PromptEncoder3d,
    render_prompt_maps,
)

__all__ = ["ImageEmbeddings", "PromptSegOutput", "RadFMPromptSegmenter", "RadFMSegConfig"]

log = logging.getLogger(__name__)

ENCODER_SOURCES = ("included", "starter", "external")


@strict
class RadFMSegConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMPromptSegmenter`.

    Args:
        encoder_config: the shared encoder (:class:`RadFMEncoderConfig` or its dict; default "tiny").
        decoder_dim: token width ``C`` of the prompt encoder and mask decoder.
        decoder_depth, decoder_heads, decoder_mlp_dim: SAM's two-way transformer.
        num_multimask_outputs: candidate masks for an ambiguous prompt (SAM: 3).
        iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP.
        mask_in_chans: hidden channels of the mask-prompt downscaling convs.
        pe_reference: voxels per unit of the random-Fourier positional code.
        class_names: structures that can be prompted by name (``class_ids`` index this list).
        window_size: ``(D, H, W)`` model-input window in voxels at the plan's spacing; larger
            volumes are cropped around the prompts (bounded memory), smaller ones padded.
        encoder_source: where the encoder weights come from: ``"included"`` (in model.safetensors),
            ``"starter"`` (``radfm.starter.starter_encoder_path()``, loaded under the adapter) or
            ``"external"`` (saved without it: pass ``encoder=`` to ``from_pretrained``).
    """

    model_type = "radfm_prompt_segmenter"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=RadFMEncoderConfig),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 256
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 64
    mask_in_chans: int = 16
    pe_reference: float | int = 128.0
    class_names: list[str] | None = None
    window_size: list[int] | tuple[int, ...] = (64, 64, 64)
    encoder_source: str = "included"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.encoder_config is None:
            self.encoder_config = RadFMEncoderConfig.from_preset("tiny").to_dict()
        super().__post_init__(**kwargs)
        if self.decoder_dim % 2 or self.decoder_dim % self.decoder_heads:
            raise ConfigError(f"decoder_dim ({self.decoder_dim}) must be even and divisible by decoder_heads "
                              f"({self.decoder_heads}).")
        if self.num_multimask_outputs < 1:
            raise ConfigError(f"num_multimask_outputs must be >= 1, got {self.num_multimask_outputs}.")
        if self.encoder_source not in ENCODER_SOURCES:
            raise ConfigError(f"encoder_source must be one of {ENCODER_SOURCES}, got {self.encoder_source!r}.")
        self.window_size = [int(v) for v in self.window_size]
        patch = self.encoder_config.patch_size
        if len(self.window_size) != 3 or any(w % p or w < p for w, p in zip(self.window_size, patch)):
            raise ConfigError(f"window_size {self.window_size} must be three positive multiples of the encoder "
                              f"patch {tuple(patch)}.")
        self.class_names = [str(c) for c in (self.class_names or [])]


@dataclass
class ImageEmbeddings:
    """What the predictor caches per volume window (image-only; no prompt involved).

    Attributes:
        embeddings: ``(B, C, gd, gh, gw)`` neck output.
        skips: the decoder's image-only skip inputs (channels-last, see ``MaskDecoder3d.image_skips``).
        grid_size: ``(gd, gh, gw)``.
        input_size: ``(D, H, W)`` of the model input.
    """

    embeddings: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    grid_size: tuple[int, int, int]
    input_size: tuple[int, int, int]


@dataclass
class PromptSegOutput(ModelOutput):
    """Output of :class:`RadFMPromptSegmenter`.

    Args:
        masks: ``(B, M, D, H, W)`` mask logits on the model input grid (threshold 0).
        iou_predictions: ``(B, M)`` predicted IoU of each mask with the intended object.
        low_res_logits: ``(B, M, 4gd, 4gh, 4gw)`` logits to feed back as ``mask_inputs`` next round.
    """

    masks: torch.Tensor | None = None
    iou_predictions: torch.Tensor | None = None
    low_res_logits: torch.Tensor | None = None


class RadFMPromptSegmenter(PreTrainedModel):
    """Promptable 3D segmentation on the shared encoder (SAM's design in 3D).

    ``encoder`` (shared, LoRA-adapted) → ``neck`` (1×1 + 3×3×3 convs to ``decoder_dim``, SAM's neck)
    → image embedding; ``prompt_encoder`` turns clicks/boxes/masks/class names into tokens;
    ``mask_decoder`` returns candidate masks at full input resolution and their predicted IoU.
    """

    config_class = RadFMSegConfig
    base_model_prefix = "radfm_promptseg"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    #: Modules trained in full and saved beside the LoRA adapter (peft ``modules_to_save``).
    head_modules: ClassVar[tuple[str, ...]] = ("neck", "prompt_encoder", "mask_decoder")

    def __init__(self, config: RadFMSegConfig) -> None:
        super().__init__(config)
        enc: RadFMEncoderConfig = config.encoder_config
        c = config.decoder_dim
        self.encoder = RadFMEncoder(enc)
        self.neck = nn.Sequential(
            nn.Conv3d(enc.hidden_size, c, kernel_size=1, bias=False),
            LayerNorm3d(c),
            nn.Conv3d(c, c, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(c),
        )
        self.prompt_encoder = PromptEncoder3d(
            embed_dim=c, patch_size=enc.patch_size, pe_reference=float(config.pe_reference),
            mask_in_chans=config.mask_in_chans, num_classes=len(config.class_names),
        )
        self.mask_decoder = MaskDecoder3d(
            transformer_dim=c,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=c,
                                          num_heads=config.decoder_heads, mlp_dim=config.decoder_mlp_dim),
            pyramid_channels=enc.pyramid_channels,
            pyramid_strides=enc.pyramid_strides,
            image_channels=enc.in_channels,
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )
        #: The input recipe (spacing, normalisation); saved as preprocess_plan.json beside the weights.
        self.preprocess_plan: PreprocessPlan | None = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Decoder-side init (the encoder initialises itself), through ``init`` so loaded weights stay.

        Why Xavier and not transformers' N(0, 0.02): the decoder is narrow (32–128 wide) and its
        hypernetwork stacks three Linear layers; at std 0.02 the mask logits start at ~1e-4 and their
        gradients vanish (a one-crop overfit barely moved in 50 steps). SAM keeps PyTorch's
        fan-in-scaled defaults for the same reason.
        """
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)  # same scale as the Fourier code they are added to
        elif isinstance(module, PositionEmbeddingRandom3d):
            init.normal_(module.gaussian_matrix, std=1.0)

    # --- the two halves of a forward ----------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.encoder_config.patch_size)  # type: ignore[return-value]

    def get_image_embeddings(
        self, pixel_values: torch.Tensor, modality_ids: torch.Tensor | None = None
    ) -> ImageEmbeddings:
        """The image-only half: ``(B, C, D, H, W)`` (multiples of the patch) → :class:`ImageEmbeddings`."""
        out = self.encoder(pixel_values, modality_ids=modality_ids, output_pyramid=True)
        grid = tuple(out.grid_size)
        tokens = out.last_hidden_state[:, self.encoder.num_prefix_tokens:]
        b, _, h = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, h, *grid)
        return ImageEmbeddings(
            embeddings=self.neck(x),
            skips=self.mask_decoder.image_skips(out.feature_pyramid, pixel_values),
            grid_size=grid,  # type: ignore[arg-type]
            input_size=tuple(pixel_values.shape[2:]),  # type: ignore[arg-type]
        )

    def decode(
        self,
        embeddings: ImageEmbeddings,
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        class_ids: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> PromptSegOutput:
        """The per-prompt half: prompts (see module doc) → :class:`PromptSegOutput`.

        ``embeddings`` may hold one image for a batch of ``B`` prompt sets, or ``B`` images.
        """
        if point_coords is None and boxes is None and mask_inputs is None and class_ids is None:
            raise InputError("no prompt given.", "Give at least one point, a box, a mask or a class name.")
        if (point_coords is None) != (point_labels is None):
            raise InputError("point_coords and point_labels must be given together.")
        bsz = next(t.shape[0] for t in (point_coords, boxes, mask_inputs, class_ids) if t is not None)
        grid = embeddings.grid_size
        if mask_inputs is not None:
            want = self.prompt_encoder.mask_input_size(grid)
            if tuple(mask_inputs.shape[2:]) != want:
                raise InputError(f"mask_inputs has spatial shape {tuple(mask_inputs.shape[2:])}, expected {want} "
                                 "(4× the token grid).", "Pass the low_res_logits of the previous round.")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(grid_size=grid, batch_size=bsz, points=points, boxes=boxes,
                                            masks=mask_inputs, class_ids=class_ids)
        maps = render_prompt_maps(embeddings.input_size, batch_size=bsz, points=points, boxes=boxes,
                                  device=embeddings.embeddings.device)
        masks, iou = self.mask_decoder(
            image_embeddings=embeddings.embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(grid).to(embeddings.embeddings.dtype),
            sparse_prompt_embeddings=sparse.to(embeddings.embeddings.dtype),
            dense_prompt_embeddings=dense.to(embeddings.embeddings.dtype),
            skips=embeddings.skips,
            prompt_maps=maps,
            multimask_output=multimask_output,
        )
        low = F.adaptive_avg_pool3d(masks.float(), self.prompt_encoder.mask_input_size(grid))
        return PromptSegOutput(masks=masks, iou_predictions=iou, low_res_logits=low)

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        modality_ids: torch.Tensor | None = None,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        class_ids: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> PromptSegOutput:
        """Embed and decode in one call (training); see :meth:`decode` for the prompts."""
        emb = self.get_image_embeddings(pixel_values, modality_ids)
        return self.decode(emb, point_coords=point_coords, point_labels=point_labels, boxes=boxes,
                           mask_inputs=mask_inputs, class_ids=class_ids, multimask_output=multimask_output)

    # --- building, saving, loading ------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: RadFMEncoder, *, encoder_source: str = "included",
                     plan: PreprocessPlan | None = None, **config_kwargs: Any) -> RadFMPromptSegmenter:
        """A new segmenter whose encoder holds a copy of ``encoder``'s weights (the caller's stays untouched)."""
        config = RadFMSegConfig(encoder_config=encoder.config.to_dict(), encoder_source=encoder_source,
                                **config_kwargs)
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        model.preprocess_plan = plan
        return model

    def class_id(self, name: str | None) -> int:
        """Index of a class prompt by name (case-insensitive); -1 for ``None``; InputError if unknown."""
        if name is None:
            return -1
        names = [c.lower() for c in self.config.class_names]
        if name.lower() not in names:
            raise InputError(f"unknown structure name {name!r} for a class prompt.",
                             f"Known names: {', '.join(self.config.class_names) or 'none (this model has no class prompts)'}.")
        return names.index(name.lower())

    def save_pretrained(self, save_directory: str | Path, *, include_encoder: bool | None = None,
                        **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained`` + ``preprocess_plan.json``.

        ``include_encoder=False`` (default when ``config.encoder_source != "included"``) drops the
        encoder's weights from ``model.safetensors``.
        """
        if include_encoder is None:
            include_encoder = self.config.encoder_source == "included"
        source = self.config.encoder_source
        if not include_encoder:
            if "state_dict" not in kwargs:
                kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
            if source == "included":  # the folder must say that the encoder is not in it
                self.config.encoder_source = "external"
        elif source != "included":
            self.config.encoder_source = "included"
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.config.encoder_source = source
        if self.preprocess_plan is not None:
            self.preprocess_plan.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any,
                        encoder: RadFMEncoder | None = None, **kwargs: Any) -> RadFMPromptSegmenter:
        """Load config + weights + plan; a model saved without its encoder gets ``encoder``'s weights
        (or, for ``encoder_source == "starter"``, the starter encoder's)."""
        from transformers.utils import logging as hf_logging

        path = Path(pretrained_model_name_or_path)
        expect_missing = RadFMSegConfig.from_pretrained(path).encoder_source != "included"
        level = hf_logging.get_verbosity()
        if expect_missing:  # the encoder's weights are missing on purpose: no "MISSING keys" report
            hf_logging.set_verbosity_error()
        try:
            model = super().from_pretrained(path, *args, **kwargs)
        finally:
            hf_logging.set_verbosity(level)
        source = model.config.encoder_source
        if encoder is None and source == "starter":
            encoder = _starter_encoder()
        elif encoder is None and source == "external":
            raise ConfigError(f"{path} was saved without its encoder.",
                              "Pass encoder=RadFMEncoder.from_pretrained(DIR) (the encoder it was trained with).")
        if encoder is not None:
            model.encoder.load_state_dict(encoder.state_dict())
        if (path / PLAN_FILENAME).is_file():
            model.preprocess_plan = PreprocessPlan.load(path)
        return model.eval()


def _starter_encoder() -> RadFMEncoder:
    """The package's starter encoder (``radfm.starter``), or a ConfigError saying it is missing."""
    try:
        from radfm.starter import starter_encoder_path  # type: ignore[attr-defined]

        path = starter_encoder_path()
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise ConfigError("this segmentation model was saved without its encoder and the starter encoder "
                          "is not installed.", "Reinstall radfm (the wheel ships radfm/starter/encoder/) or "
                          "pass encoder=RadFMEncoder.from_pretrained(DIR).") from exc
    return RadFMEncoder.from_pretrained(path)


# ----------------------------------------------------------------------------- LoRA (peft via radfm.adapters)
# The encoder-only adapter API of radfm.adapters.lora: LoRA factors on the shared encoder saved
# apart (`adapter/`), the head kept in the model's own safetensors (no duplicate head copy).
SEG_TASK = "prompt-segmentation"


def attach_seg_lora(model: RadFMPromptSegmenter, spec: Any = None, *, train_head: bool = True) -> Any:
    """Wrap ``model`` with peft LoRA on its encoder, the prompt encoder and mask decoder trainable."""
    from radfm.adapters.lora import attach_encoder_lora

    return attach_encoder_lora(model, spec, trainable_modules=RadFMPromptSegmenter.head_modules if train_head else ())
