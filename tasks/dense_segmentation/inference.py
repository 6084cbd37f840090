"""Inference of a dense-segmentation adapter: sliding windows on the model grid, labels on the input's.

:func:`predict_volume` is ``apply_plan`` → Gaussian-weighted sliding windows
(:func:`sliding_window_logits`) → ``restore_to_input``, so predictions land on the input's own
canonical grid. :func:`segment_volume` is the same for a folder written by ``radfm adapt``; it is
registered in the ``radfm.segmenters`` entry-point group so that ``radfm segment --adapter DIR``
(another task package, which may not import this one) finds it by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from radfm.check import require_valid
from radfm.errors import InputError
from radfm.io.volume import Volume
from radfm.preprocess.plan import PreprocessPlan, apply_plan, restore_to_input
from radfm.tasks.dense_segmentation.data import modality_id_of
from radfm.tasks.dense_segmentation.model import autocast, forward_logits

__all__ = ["predict_volume", "segment_volume", "select_structure", "sliding_window_logits"]


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    tensor: torch.Tensor,
    roi_size: Sequence[int],
    *,
    modality_id: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    bf16: bool = False,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``(C, D, H, W)`` model-space input → ``(K, D, H, W)`` float32 logits (Gaussian-weighted windows)."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = tensor[None].to(device)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, bf16):
            return forward_logits(model, batch, modality_id).float()

    out = sliding_window_inference(x, roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size,
                                   predictor=predictor, overlap=overlap, mode="gaussian")
    return out[0].float().cpu()


def predict_volume(
    model: nn.Module,
    plan: PreprocessPlan,
    volume: Volume,
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    bf16: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Label map ``(X, Y, Z)`` uint8 (class indices, see ``label_names``) on ``volume``'s canonical grid.

    ``apply_plan`` → sliding-window logits over ``plan.patch_size`` windows → ``restore_to_input``
    (logits resampled back, then argmax). Write it in the file's own space with ``radfm.io.save_like``.
    """
    require_valid(volume)
    prepared = apply_plan(volume, plan)
    logits = sliding_window_logits(model, prepared.tensor, plan.patch_size, modality_id=modality_id_of(plan, volume),
                                   overlap=overlap, sw_batch_size=sw_batch_size, bf16=bf16, device=device)
    return restore_to_input(logits, prepared, kind="label")


def segment_volume(volume: Volume, adapter_dir: str | Path, structure: str | None = None,
                   dtype: Literal["fp32", "bf16"] = "fp32") -> tuple[np.ndarray, str]:
    """``(mask, label)`` of a ``radfm adapt`` folder on ``volume``: the mask of ``structure`` or all foreground.

    ``mask``: ``(X, Y, Z)`` uint8 0/1 on ``volume``'s canonical grid; ``label``: the structure's name
    (all foreground: the names joined by ", "). ``structure`` matches a class name case-insensitively,
    with "_" and " " alike. The ``radfm.segmenters`` entry ``dense_segmentation`` (see module doc).
    """
    from radfm.tasks.dense_segmentation.checkpoint import load_adapted

    model, plan, names = load_adapted(adapter_dir)
    labels = predict_volume(model, plan, volume, bf16=dtype == "bf16")
    return select_structure(labels, names, structure, where=f"the adapter {adapter_dir}")


def select_structure(labels: np.ndarray, names: dict[int, str], structure: str | None, *,
                     where: str) -> tuple[np.ndarray, str]:
    """``(mask, label)`` of one class of a label map (``None``: all foreground, names joined by ", ").

    ``structure`` matches a class name case-insensitively, with "_" and " " alike; an unknown name
    is an InputError listing the known ones (``where`` says whose).
    """
    fg = {k: v for k, v in names.items() if k > 0}
    if structure is None:
        return (labels > 0).astype(np.uint8), ", ".join(fg.values())
    match = [k for k, v in fg.items() if v.lower().replace("_", " ") == structure.lower().replace("_", " ")]
    if not match:
        raise InputError(f"unknown structure name {structure!r} for {where}.",
                         f"Known names: {', '.join(fg.values())}.")
    return (labels == match[0]).astype(np.uint8), fg[match[0]]
