"""Starter weights shipped inside the package (safetensors) with their model cards.

``encoder/`` holds the starter encoder: a small 3D ViT (192 wide, 8 blocks, 8³-voxel patches)
pretrained by masked autoencoding on SIMULATED CT/MR phantoms and a real T1 brain MRI
(``configs/pretrain/starter.yaml``; ``encoder/MODEL_CARD.md`` says what it is and is not good for).
It is a starting point for LoRA / few-shot adaptation, not a clinical model.

``cnn_encoder/`` holds the shared CNN encoder (``architecture="cnn"``, preset "cnn-small": a
residual 3D CNN with features at strides 1–16), trained together with the prompt-segmentation
decoder on real volumes (labels and self-supervised pseudo-masks), inserted shapes and phantoms
(``cnn_encoder/MODEL_CARD.md``). The dense vision heads (prompt segmentation, few-shot adaptation)
run on it; the report model still runs on the ViT in ``encoder/`` (it was trained on that one).

Why bfloat16 on disk with ``"dtype": "float32"`` in its config.json: the package keeps its
weights small (about 8 MB instead of 16), while ``RadFMEncoder.from_pretrained`` still builds a
float32 model (it upcasts on load), so tasks mixing it with float32 heads need no care.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `import radfm.starter` must stay cheap
    import torch

    from radfm.models.encoder import RadFMEncoder
    from radfm.preprocess.plan import PreprocessPlan

__all__ = ["CNN_ENCODER_DIR", "STARTER_ENCODER_DIR", "load_starter_encoder", "starter_encoder_path",
           "starter_preprocess_plan"]

STARTER_ENCODER_DIR = Path(__file__).resolve().parent / "encoder"
CNN_ENCODER_DIR = Path(__file__).resolve().parent / "cnn_encoder"
_KINDS = {"vit": STARTER_ENCODER_DIR, "cnn": CNN_ENCODER_DIR}


def starter_encoder_path(kind: str = "vit") -> Path:
    """Folder of a starter encoder (``"vit"``: ``encoder/``; ``"cnn"``: the shared CNN ``cnn_encoder/``),
    holding ``config.json``, ``model.safetensors``, ``preprocess_plan.json`` and ``MODEL_CARD.md``;
    ``FileNotFoundError`` when this installation lacks it."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}.")
    d = _KINDS[kind]
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the starter encoder is missing from {d}. Reinstall radfm, or rebuild it with "
            "`radfm pretrain -c configs/pretrain/starter.yaml` and copy output_dir/encoder there."
        )
    return d


def load_starter_encoder(*, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                         kind: str = "vit") -> RadFMEncoder:
    """The starter :class:`~radfm.models.encoder.RadFMEncoder` in eval mode (float32 unless ``dtype``)."""
    import torch

    from radfm.models.encoder import RadFMEncoder

    model = RadFMEncoder.from_pretrained(starter_encoder_path(kind), dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval()


def starter_preprocess_plan(modality: str = "any") -> PreprocessPlan:
    """The input recipe the starter encoder was pretrained with.

    ``"any"``/``"MR"``: the saved plan (2 mm, percentile normalisation); ``"CT"``: the same with
    ``modality="CT"`` (CT was pretrained both percentile-normalised and HU-windowed, so either
    ``normalization`` works; the plan keeps percentile, the one MR uses too).
    """
    from dataclasses import replace

    from radfm.preprocess.plan import PreprocessPlan

    plan = PreprocessPlan.load(starter_encoder_path())
    if modality not in ("any", "CT", "MR"):
        raise ValueError(f"modality must be 'any', 'CT' or 'MR', got {modality!r}.")
    return plan if modality == "any" else replace(plan, modality=modality)
