"""Held-out evaluation by simulated clicking, and the image-blind click-ball baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from radfm.tasks.segmentation.cases import TrainCase
from radfm.tasks.segmentation.interaction import interactive_session
from radfm.tasks.segmentation.model import RadFMPromptSegmenter
from radfm.tasks.segmentation.sampling import target_ids

__all__ = ["click_ball_dice", "evaluate_clicks", "object_crops"]


def object_crops(cases: Sequence[TrainCase], *, per_case: int = 4, crop: Sequence[int] = (64, 64, 64),
                 seed: int = 1, min_voxels: int = 30, kinds: str = "real") -> list[tuple[TrainCase, torch.Tensor, np.ndarray]]:
    """Held-out evaluation objects: ``(case, image crop (C, d, h, w), bool target)``, crops centred on objects."""
    from radfm.tasks.segmentation.data import random_crop

    rng = np.random.default_rng(seed)
    out = []
    for case in cases:
        ids = target_ids(case, kinds)
        if not ids:
            continue
        for obj in rng.permutation(ids)[:per_case]:
            comps, n = ndimage.label(case.labels == obj)
            if n == 0:
                continue
            big = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
            full = comps == big
            if full.sum() < min_voxels:
                continue
            centre = np.argwhere(full).mean(0)
            img, lab = random_crop(case.image, full.astype(np.int32), crop, centre, np.random.default_rng(0))
            if (lab > 0).sum() >= min_voxels:
                out.append((case, img, lab > 0))
    return out


@torch.no_grad()
def evaluate_clicks(model: RadFMPromptSegmenter, objects: Sequence[tuple[TrainCase, torch.Tensor, np.ndarray]], *,
                    n_clicks: int = 5, bf16: bool = True) -> dict[str, np.ndarray]:
    """Dice after 1..n_clicks simulated clicks (:func:`interactive_session`) on held-out object crops.

    Returns ``{"dice": (n_objects, n_clicks), "quality": (n_objects, n_clicks), "stability": …}``.
    """
    from radfm.tasks.segmentation.calibration import stability_score

    model.eval()
    dices, quals, stabs = [], [], []
    for case, img, tgt in objects:
        modality = torch.tensor([case.modality_id]) if model.encoder.modality_embed is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = model.get_image_embeddings(img[None], modality)
        state: dict[str, Any] = {"low": None, "q": [], "s": []}

        def predict(points: np.ndarray, labels: np.ndarray, _s: Any, emb: Any = emb,
                    state: dict[str, Any] = state) -> tuple[np.ndarray, Any]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.decode(emb, point_coords=torch.from_numpy(points[None]).float(),
                                   point_labels=torch.from_numpy(labels[None]).long(), mask_inputs=state["low"])
            state["low"] = out.masks.float()
            state["q"].append(float(out.iou_predictions[0, 0]))
            state["s"].append(stability_score(out.masks[0, 0], 1.0))
            return (out.masks[0, 0].float() > 0).numpy(), None

        d, _ = interactive_session(predict, tgt, n_clicks, spacing=case.spacing)
        pad = n_clicks - len(d)
        dices.append(d + [d[-1]] * pad)
        quals.append(state["q"] + [state["q"][-1] if state["q"] else 0.0] * (n_clicks - len(state["q"])))
        stabs.append(state["s"] + [state["s"][-1] if state["s"] else 0.0] * (n_clicks - len(state["s"])))
    return {"dice": np.array(dices), "quality": np.array(quals), "stability": np.array(stabs)}


def click_ball_dice(objects: Sequence[tuple[TrainCase, torch.Tensor, np.ndarray]], *, n_clicks: int = 1,
                    radii_mm: Sequence[float] = (4, 6, 8, 10, 14, 18, 24, 32, 45)) -> tuple[float, float]:
    """The image-blind baseline at its best radius (an oracle): union of balls around positive clicks
    minus balls around negative ones, clicked by the same protocol. Returns ``(mean Dice, radius mm)``."""
    best = (0.0, 0.0)
    for r in radii_mm:
        scores = []
        for case, _img, tgt in objects:
            grid = np.indices(tgt.shape).reshape(3, -1).T.astype(np.float32) * np.asarray(case.spacing, np.float32)

            def predict(points: np.ndarray, labels: np.ndarray, _s: Any, grid: np.ndarray = grid,
                        shape: tuple[int, ...] = tgt.shape, r: float = r, sp: Sequence[float] = case.spacing) -> tuple[np.ndarray, Any]:
                pos = np.zeros(len(grid), bool)
                neg = np.zeros(len(grid), bool)
                for p, lab in zip(points, labels):
                    d2 = ((grid - np.asarray(p, np.float32) * np.asarray(sp, np.float32)) ** 2).sum(1)
                    (pos if lab == 1 else neg)[d2 <= r * r] = True
                return (pos & ~neg).reshape(shape), None

            d, _ = interactive_session(predict, tgt, n_clicks, spacing=case.spacing)
            scores.append(d[-1] if d else 0.0)
        mean = float(np.mean(scores)) if scores else 0.0
        if mean > best[0]:
            best = (mean, float(r))
    return best
