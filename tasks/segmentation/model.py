"""The prompt segmenter: shared CNN encoder + prompt-fused U-shaped decoder + quality head.

Design, chosen by measurement (docs/benchmarks.md, ``radfm bench promptseg``): the earlier
SAM-style late fusion (prompt tokens × 24 mm image tokens, masks as a dot product with a Gaussian
click map) returned a ball around every click on real scans and on noise alike. Here the image
features of every encoder stage (strides 1–16, computed once per window and cached: the
"embedding") meet the prompt maps (:mod:`radfm.tasks.segmentation.prompts`) at *every* decoder
scale, down to full resolution, so the mask can stop at the intensity border nearest the click.
A click costs one decoder pass (not an encoder pass) over the window.

Shapes: model input ``(B, C, D, H, W)`` (multiples of the encoder's total stride, 16); prompts in
continuous voxel indices ``(z, y, x)`` of that input (``point_coords (B, N, 3)``, ``point_labels
(B, N)`` 1 / 0 / -1 = padding, ``boxes (B, 6)`` inclusive corners, ``mask_inputs (B, 1, D, H, W)``
logits of the previous round, ``class_ids (B,)`` -1 = none).

Saving: ``save_pretrained(dir)`` writes ``config.json`` + ``model.safetensors`` + the preprocessing
plan. With ``encoder_source="starter"`` the shared encoder's weights are left out: the shipped
model is the decoder over the starter encoder the package already ships, plus its LoRA adapter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from radfm.errors import ConfigError, InputError
from radfm.models.cnn import ConvNormAct, ResBlock3d
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.models.init_weights import init_standard_layer
from radfm.preprocess.plan import PLAN_FILENAME, PreprocessPlan
from radfm.tasks.segmentation.prompts import NUM_PROMPT_MAPS, render_prompt_maps

__all__ = ["ImageEmbeddings", "PromptSegOutput", "PromptUNetDecoder", "RadFMPromptSegmenter", "RadFMSegConfig"]

log = logging.getLogger(__name__)

ENCODER_SOURCES = ("included", "starter", "starter-cnn", "external")


@strict
class RadFMSegConfig(PreTrainedConfig):
    r"""Config of :class:`RadFMPromptSegmenter`.

    Args:
        encoder_config: the shared encoder (a CNN trunk, ``architecture="cnn"``; default "cnn-tiny").
        click_sigma: width (model voxels) of a click's Gaussian in the prompt maps.
        class_names: structures that can be prompted by name (``class_ids`` index this list).
        window_size: ``(D, H, W)`` model-input window in voxels at the plan's spacing; larger
            volumes are cropped around the prompts (bounded memory), smaller ones padded.
        encoder_source: ``"included"`` (in model.safetensors), ``"starter-cnn"`` (the package's
            shared CNN encoder, ``radfm.starter.starter_encoder_path("cnn")``, plus the LoRA adapter
            saved beside when there is one) or ``"external"`` (pass ``encoder=`` to ``from_pretrained``).
        inference_spacings: extra isotropic grid spacings (mm, coarser than the plan's) at which a
            first prompt is also answered; the predictor keeps the mask whose border lies on an
            image edge (``scale_choice``) and refines at that spacing. Empty: the plan's spacing only.
    """

    model_type = "radfm_prompt_segmenter"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder_config": SubConfigSpec(config_class=RadFMEncoderConfig),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    click_sigma: float | int = 2.0
    class_names: list[str] | None = None
    window_size: list[int] | tuple[int, ...] = (128, 128, 128)
    encoder_source: str = "included"
    inference_spacings: list[float] | tuple[float, ...] = ()

    def __post_init__(self, **kwargs: Any) -> None:
        if self.encoder_config is None:
            self.encoder_config = RadFMEncoderConfig.from_preset("cnn-tiny").to_dict()
        super().__post_init__(**kwargs)
        if self.encoder_config.architecture != "cnn":
            raise ConfigError("the prompt segmenter needs a CNN encoder (architecture='cnn').",
                              "Build it from RadFMEncoderConfig.from_preset('cnn-small') or the starter encoder.")
        if self.encoder_source not in ENCODER_SOURCES:
            raise ConfigError(f"encoder_source must be one of {ENCODER_SOURCES}, got {self.encoder_source!r}.")
        self.window_size = [int(v) for v in self.window_size]
        patch = self.encoder_config.patch_size
        if len(self.window_size) != 3 or any(w % p or w < p for w, p in zip(self.window_size, patch)):
            raise ConfigError(f"window_size {self.window_size} must be three positive multiples of the encoder "
                              f"stride {tuple(patch)}.")
        self.class_names = [str(c) for c in (self.class_names or [])]
        self.inference_spacings = [float(v) for v in (self.inference_spacings or ())]
        if any(not np.isfinite(v) or v <= 0 for v in self.inference_spacings):
            raise ConfigError(f"inference_spacings must be positive mm values, got {self.inference_spacings}.")


@dataclass
class ImageEmbeddings:
    """What the predictor caches per volume window (image only, no prompt involved).

    Attributes:
        features: the encoder's stage maps, finest first (strides 1, 2, 4, …).
        input_size: ``(D, H, W)`` of the model input.
    """

    features: tuple[torch.Tensor, ...]
    input_size: tuple[int, int, int]

    @property
    def grid_size(self) -> tuple[int, int, int]:
        return tuple(self.features[-1].shape[2:])  # type: ignore[return-value]


@dataclass
class PromptSegOutput(ModelOutput):
    """Output of :class:`RadFMPromptSegmenter`.

    Args:
        masks: ``(B, 1, D, H, W)`` mask logits on the model input grid (threshold 0).
        iou_predictions: ``(B, 1)`` predicted Dice of the mask with the intended object (quality head).
        low_res_logits: the same logits, to feed back as ``mask_inputs`` next round (full resolution;
            the name is segment-anything's).
    """

    masks: torch.Tensor | None = None
    iou_predictions: torch.Tensor | None = None
    low_res_logits: torch.Tensor | None = None


def _pool_maps(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """Prompt maps at stride ``factor``: max for clicks (a click must survive), mean for box and mask."""
    if factor == 1:
        return maps
    clicks = F.max_pool3d(maps[:, :2], factor)
    rest = F.avg_pool3d(maps[:, 2:], factor)
    return torch.cat([clicks, rest], dim=1)


class PromptUNetDecoder(nn.Module):
    """U-shaped decoder whose every scale reads the image features *and* the prompt maps.

    Args:
        channels: encoder stage widths, finest first (the decoder mirrors them).
        num_classes: names that can be prompted (a FiLM scale/shift of the bottleneck per class).
    Forward: stage maps (finest first), prompt maps ``(B, NUM_PROMPT_MAPS, D, H, W)``, class ids
    ``(B,)`` → ``(logits (B, 1, D, H, W), quality (B, 1))``.
    """

    def __init__(self, *, channels: list[int], num_classes: int = 0) -> None:
        super().__init__()
        m = NUM_PROMPT_MAPS
        c = list(channels)
        self.bottleneck = nn.Sequential(ConvNormAct(c[-1] + m, c[-1]), ResBlock3d(c[-1]))
        self.class_film = nn.Embedding(num_classes, 2 * c[-1]) if num_classes else None
        n = len(c) - 1
        self.up = nn.ModuleList(nn.ConvTranspose3d(c[i + 1], c[i], kernel_size=2, stride=2) for i in reversed(range(n)))
        self.fuse = nn.ModuleList(ConvNormAct(2 * c[i] + m, c[i]) for i in reversed(range(n)))
        self.refine = nn.ModuleList(ResBlock3d(c[i]) if i > 0 else nn.Identity() for i in reversed(range(n)))
        self.head = nn.Conv3d(c[0], 1, kernel_size=1)
        self.quality = nn.Sequential(nn.Linear(2 * c[0] + 2, 32), nn.GELU(), nn.Linear(32, 1))

    def forward(self, features: tuple[torch.Tensor, ...], maps: torch.Tensor,
                class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = maps.shape[0]

        def per_prompt(x: torch.Tensor) -> torch.Tensor:
            return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x

        dtype = features[-1].dtype
        levels = len(features)
        x = torch.cat([per_prompt(features[-1]), _pool_maps(maps, 2 ** (levels - 1)).to(dtype)], dim=1)
        x = self.bottleneck(x)
        if class_ids is not None and self.class_film is not None:
            ids = class_ids.long().reshape(-1)
            film = self.class_film(ids.clamp_min(0)) * (ids >= 0)[:, None].to(x.dtype)
            scale, shift = film.chunk(2, dim=1)
            x = x * (1 + scale[:, :, None, None, None].to(x.dtype)) + shift[:, :, None, None, None].to(x.dtype)
        for j, (up, fuse, refine) in enumerate(zip(self.up, self.fuse, self.refine)):
            lvl = levels - 2 - j
            skip = per_prompt(features[lvl])
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = refine(fuse(torch.cat([x, skip.to(x.dtype), _pool_maps(maps, 2**lvl).to(x.dtype)], dim=1)))
        logits = self.head(x)
        prob = torch.sigmoid(logits.float())
        feat = x.float()
        inside = (feat * prob).flatten(2).sum(-1) / prob.flatten(2).sum(-1).clamp_min(1.0)
        outside = (feat * (1 - prob)).flatten(2).sum(-1) / (1 - prob).flatten(2).sum(-1).clamp_min(1.0)
        frac = prob.flatten(1).mean(1, keepdim=True)
        crisp = ((prob - 0.5).abs() * 2).flatten(1).mean(1, keepdim=True)
        quality = torch.sigmoid(self.quality(torch.cat([inside, outside, frac, crisp], dim=1)))
        return logits, quality


class RadFMPromptSegmenter(PreTrainedModel):
    """Promptable 3D segmentation on the shared encoder: clicks, boxes, previous masks, class names."""

    config_class = RadFMSegConfig
    base_model_prefix = "radfm_promptseg"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    #: Modules trained in full and saved with the model (the encoder gets LoRA, saved apart).
    head_modules: ClassVar[tuple[str, ...]] = ("decoder",)

    def __init__(self, config: RadFMSegConfig) -> None:
        super().__init__(config)
        enc: RadFMEncoderConfig = config.encoder_config
        self.encoder = RadFMEncoder(enc)
        self.decoder = PromptUNetDecoder(channels=list(enc.cnn_channels), num_classes=len(config.class_names))
        #: The input recipe (spacing, normalisation); saved as preprocess_plan.json beside the weights.
        self.preprocess_plan: PreprocessPlan | None = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if init_standard_layer(module):
            return
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=0.1)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The input multiple the model needs (the encoder's total stride)."""
        return tuple(self.config.encoder_config.patch_size)  # type: ignore[return-value]

    def get_image_embeddings(self, pixel_values: torch.Tensor,
                             modality_ids: torch.Tensor | None = None) -> ImageEmbeddings:
        """The image-only half: ``(B, C, D, H, W)`` → :class:`ImageEmbeddings` (cached by predictors)."""
        out = self.encoder(pixel_values, modality_ids=modality_ids)
        return ImageEmbeddings(features=tuple(out.feature_maps),
                               input_size=tuple(pixel_values.shape[2:]))  # type: ignore[arg-type]

    def decode(
        self,
        embeddings: ImageEmbeddings,
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        class_ids: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> PromptSegOutput:
        """The per-prompt half. ``embeddings`` may hold one image for ``B`` prompt sets, or ``B`` images.

        ``multimask_output`` is accepted for segment-anything compatibility; this decoder returns one
        mask (ambiguity is resolved by the next click, which costs one decoder pass).
        """
        if point_coords is None and boxes is None and mask_inputs is None and class_ids is None:
            raise InputError("no prompt given.", "Give at least one point, a box, a mask or a class name.")
        if (point_coords is None) != (point_labels is None):
            raise InputError("point_coords and point_labels must be given together.")
        bsz = next(t.shape[0] for t in (point_coords, boxes, mask_inputs, class_ids) if t is not None)
        size = embeddings.input_size
        if mask_inputs is not None and tuple(mask_inputs.shape[2:]) != tuple(size):
            raise InputError(f"mask_inputs has spatial shape {tuple(mask_inputs.shape[2:])}, expected {tuple(size)} "
                             "(the model input).", "Pass the low_res_logits of the previous round.")
        points = (point_coords, point_labels) if point_coords is not None else None
        device = embeddings.features[0].device
        maps = render_prompt_maps(size, batch_size=bsz, points=points, boxes=boxes, mask_logits=mask_inputs,
                                  sigma=float(self.config.click_sigma), device=device)
        logits, quality = self.decoder(embeddings.features, maps, class_ids)
        return PromptSegOutput(masks=logits, iou_predictions=quality, low_res_logits=logits)

    def mask_input_size(self, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
        """Spatial size ``mask_inputs`` must have for a model input of ``input_size``."""
        return tuple(input_size)  # type: ignore[return-value]

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
        multimask_output: bool = False,
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
        """Index of a class prompt by name (case-insensitive, ``_`` = space); -1 for ``None``."""
        if name is None:
            return -1
        norm = [c.lower().replace("_", " ") for c in self.config.class_names]
        key = name.lower().replace("_", " ").strip()
        if key not in norm:
            raise InputError(f"unknown structure name {name!r} for a class prompt.",
                             f"Known names: {', '.join(self.config.class_names) or 'none (this model has no class prompts)'}.")
        return norm.index(key)

    def save_pretrained(self, save_directory: str | Path, *, include_encoder: bool | None = None,
                        **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained`` + ``preprocess_plan.json``; the encoder left out unless included."""
        if include_encoder is None:
            include_encoder = self.config.encoder_source == "included"
        source = self.config.encoder_source
        if not include_encoder:
            if "state_dict" not in kwargs:
                kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
            if source == "included":
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
        if encoder is None and source in ("starter", "starter-cnn"):
            encoder = _starter_encoder("cnn" if source == "starter-cnn" else "vit")
        elif encoder is None and source == "external":
            raise ConfigError(f"{path} was saved without its encoder.",
                              "Pass encoder=RadFMEncoder.from_pretrained(DIR) (the encoder it was trained with).")
        if encoder is not None:
            model.encoder.load_state_dict(encoder.state_dict())
        if (path / PLAN_FILENAME).is_file():
            model.preprocess_plan = PreprocessPlan.load(path)
        return model.eval()


def _starter_encoder(kind: str) -> RadFMEncoder:
    """A starter encoder of the package (``radfm.starter``), or a ConfigError saying it is missing."""
    try:
        from radfm.starter import starter_encoder_path  # type: ignore[attr-defined]

        path = starter_encoder_path(kind)
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise ConfigError("this segmentation model was saved without its encoder and the starter encoder "
                          "is not installed.", "Reinstall radfm (the wheel ships radfm/starter/encoder/) or "
                          "pass encoder=RadFMEncoder.from_pretrained(DIR).") from exc
    return RadFMEncoder.from_pretrained(path, dtype=torch.float32)


# ----------------------------------------------------------------------------- LoRA (peft via radfm.adapters)
SEG_TASK = "prompt-segmentation"


def attach_seg_lora(model: RadFMPromptSegmenter, spec: Any = None, *, train_head: bool = True) -> Any:
    """Wrap ``model`` with peft LoRA on its encoder, the decoder trainable."""
    from radfm.adapters.lora import attach_encoder_lora

    return attach_encoder_lora(model, spec, trainable_modules=RadFMPromptSegmenter.head_modules if train_head else ())
