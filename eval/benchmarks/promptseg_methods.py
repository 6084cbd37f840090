"""The methods ``radfm bench promptseg`` compares, each on the same click protocol.

The shipped prompt segmenter (clicks and class prompts), scikit-image's random walker on the model's
own window, and the image-blind click-ball answer (its best radius is picked by the benchmark).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from radfm.eval.benchmarks.promptseg_targets import Target
from radfm.io import canonical_index_to_native
from radfm.tasks.segmentation.interaction import interactive_session
from radfm.tasks.segmentation.predictor import SegPredictor

__all__ = ["BALL_RADII_MM", "class_prompt_dice", "click_ball_session", "model_session", "random_walker_session"]


def model_session(predictor: SegPredictor, target: Target, n_clicks: int,
                  ) -> tuple[list[float], list[float], list[tuple[float, float, float | None]]]:
    """Dice per click, per-click seconds and (predicted IoU, stability, expected Dice) per click."""
    times: list[float] = []
    scores: list[tuple[float, float, float | None]] = []

    def predict(points: np.ndarray, labels: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        native = canonical_index_to_native(points, target.volume)
        t = time.perf_counter()
        r = predictor.predict(points=native, labels=labels, mask_input=state, multimask=len(points) == 1)
        times.append(time.perf_counter() - t)
        scores.append((r.score, float(r.stability or 0.0), r.expected_dice))
        return r.mask.astype(bool), r

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices, times, scores


def click_ball_session(target: Target, n_clicks: int, radius_mm: float) -> list[float]:
    """The image-blind baseline: union of balls (``radius_mm``) at positive clicks minus balls at negative ones."""
    sp = np.asarray(target.volume.spacing, float)
    shape = np.asarray(target.gt.shape)
    half = np.ceil(radius_mm / sp).astype(int)

    def predict(points: np.ndarray, labels: np.ndarray, _state: Any) -> tuple[np.ndarray, Any]:
        pos = np.zeros(target.gt.shape, bool)
        neg = np.zeros(target.gt.shape, bool)
        for p, lab in zip(points, labels):
            c = np.rint(p).astype(int)
            lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, shape)
            if np.any(hi <= lo):
                continue
            grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            d2 = sum(((g - ci) * si) ** 2 for g, ci, si in zip(grids, c, sp))
            region = (pos if lab == 1 else neg)[tuple(slice(a, b) for a, b in zip(lo, hi))]
            region |= d2 <= radius_mm**2
        return pos & ~neg, None

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices + [dices[-1]] * (n_clicks - len(dices))


BALL_RADII_MM = (4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 24.0, 32.0, 45.0)


def random_walker_session(predictor: SegPredictor, target: Target, n_clicks: int, *, beta: float = 1000.0,
                          seed_radius: int = 2, clip_k: float = 6.0) -> tuple[list[float], list[float]]:
    """The classical baseline on the same click protocol and the same model-grid window.

    Each click seeds a small ball (``seed_radius`` model voxels, 6 mm) rather than one voxel (a lone
    voxel seed has almost no pull in 3D), the window border is background, and intensities are
    clipped to ±``clip_k`` robust SDs around the first click's (so soft-tissue contrast is not
    flattened by air and bone). These settings were chosen on phantoms (beta 130/1000, k 3/6/12),
    not on the benchmark objects.
    """
    from scipy import ndimage
    from skimage.segmentation import random_walker

    times: list[float] = []
    img = predictor.prepared.tensor[0].numpy()
    state: dict[str, Any] = {"window": None}
    ball_se = ndimage.generate_binary_structure(3, 1)

    def predict(points: np.ndarray, labels: np.ndarray, _state: Any) -> tuple[np.ndarray, Any]:
        model_pts = predictor.canonical_to_model(points)
        if state["window"] is None:  # the window the model would embed for the first click, kept after
            state["window"] = predictor.window_for(model_pts[:1])
        window = state["window"]
        crop = img[tuple(slice(s, e) for s, e in window)]
        seeds = np.zeros(crop.shape, dtype=np.int32)
        seeds[0], seeds[-1] = 2, 2
        seeds[:, 0], seeds[:, -1] = 2, 2
        seeds[:, :, 0], seeds[:, :, -1] = 2, 2
        off = np.array([s for s, _ in window])
        for p, lab in zip(model_pts, labels):
            q = np.clip(np.rint(p - off).astype(int), 0, np.array(crop.shape) - 1)
            ball = np.zeros(crop.shape, dtype=bool)
            ball[tuple(q)] = True
            seeds[ndimage.binary_dilation(ball, ball_se, iterations=seed_radius)] = 1 if lab else 2
        if "clip" not in state:
            fg = crop[seeds == 1]
            i0 = float(np.median(fg))
            sd = max(1.4826 * float(np.median(np.abs(fg - i0))), 0.01)
            state["clip"] = (i0 - clip_k * sd, i0 + clip_k * sd)
        t = time.perf_counter()
        seg = random_walker(np.clip(crop, *state["clip"]), seeds, beta=beta, mode="cg_j", tol=1e-2)
        times.append(time.perf_counter() - t)
        logits = torch.from_numpy(np.where(seg == 1, 1.0, -1.0).astype(np.float32))
        return predictor.logits_to_canonical(logits, window).astype(bool), None

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices, times


def class_prompt_dice(predictor: SegPredictor, targets: list[Target]) -> dict[str, float]:
    """Dice of ``class_name`` alone (no click) for the CT organs whose names the model knows."""
    from radfm.metrics import dice_score
    from radfm.tasks.segmentation.data import canonical_class_name

    out: dict[str, float] = {}
    known = {c.lower() for c in predictor.model.config.class_names}
    for tgt in targets:
        name = canonical_class_name(tgt.name)
        if tgt.group != "CT organ" or name is None or name not in known:
            continue
        predictor.set_volume(tgt.volume)
        r = predictor.predict(class_name=name)
        out[name] = round(dice_score(r.mask > 0, tgt.gt), 4)
    return out
