"""The click protocol shared by training, tests and benchmarks: where the next corrective click goes.

Every method (the model, the random walker, the click-ball baseline) is clicked the same way:
click 1 at the object's most interior voxel, every next click at the interior of the largest error
component of *that method's own* current mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from radfm.metrics import dice_score

__all__ = ["PredictFn", "dice_score", "interactive_session", "next_click"]


def next_click(pred: np.ndarray, gt: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               rng: np.random.Generator | None = None, top_fraction: float = 0.0) -> tuple[np.ndarray, int] | None:
    """The next corrective click for a mask ``pred`` of object ``gt`` (both bool, same 3D shape).

    The error voxels (false negatives ∪ false positives) are split into connected components; the
    largest component is the one to fix, and the click goes to its most interior voxel (largest
    distance, in mm, to the component's border). Label 1 when the component is missed object
    (false negative), 0 when it is leakage (false positive). With ``rng`` and ``top_fraction`` > 0
    the click is drawn among voxels within that fraction of the maximum distance (training
    variety). Work is restricted to the bounding box of ``pred | gt``. Returns ``None`` when
    ``pred == gt``.
    """
    union = pred | gt
    if not union.any():
        return None
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, np.asarray(gt.shape))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, g = pred[sl], gt[sl]
    best: tuple[int, np.ndarray, int] | None = None
    for err, label in ((g & ~p, 1), (p & ~g, 0)):
        if not err.any():
            continue
        comps, _ = ndimage.label(err)
        sizes = np.bincount(comps.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), comps == k, label)
    if best is None:
        return None
    _, comp, label = best
    dist = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=tuple(float(s) for s in spacing))[1:-1, 1:-1, 1:-1]
    if rng is not None and top_fraction > 0:
        cand = np.argwhere(dist >= (1.0 - top_fraction) * dist.max())
        point = cand[int(rng.integers(len(cand)))]
    else:
        point = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.asarray(point) + lo, label



PredictFn = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


def interactive_session(predict: PredictFn, gt: np.ndarray, n_clicks: int, *,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[list[float], list[Any]]:
    """Simulate ``n_clicks`` rounds of clicking on one object with any method.

    ``predict(points (N, 3) canonical voxel indices, labels (N,), state) -> (mask bool, state)`` is
    called after every click with all clicks so far (``state`` is the method's previous output,
    ``None`` at first). The first click is the interior point of the object (the error region of an
    empty mask), every next one comes from the current mask's errors (:func:`next_click`), so all
    methods follow the same protocol on their own mistakes. Returns the Dice after each click and
    the states.
    """
    pred = np.zeros(gt.shape, dtype=bool)
    points: list[np.ndarray] = []
    labels: list[int] = []
    dices: list[float] = []
    states: list[Any] = []
    state = None
    for _ in range(n_clicks):
        click = next_click(pred, gt, spacing=spacing)
        if click is None:  # perfect: the remaining rounds keep the score
            dices.append(dices[-1] if dices else 1.0)
            continue
        points.append(click[0])
        labels.append(click[1])
        pred, state = predict(np.array(points, float), np.array(labels), state)
        pred = np.asarray(pred, dtype=bool)
        dices.append(dice_score(pred, gt))
        states.append(state)
    return dices, states
