"""Dice overlap: the one definition every task, adapter and benchmark uses.

Empty masks, decided once: both empty → 1.0 (nothing to find, nothing found); exactly one empty → 0.0.
Counted exactly in integers with numpy; equals ``monai.metrics.compute_dice(..., ignore_empty=False)``
but avoids its float one-hot copies of a whole CT per label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radfm.metrics._arrays import ArrayLike, label_masks, per_label, same_shape

__all__ = ["dice", "dice_score"]


def _dice_of_masks(pm: np.ndarray, tm: np.ndarray) -> float:
    denom = int(np.count_nonzero(pm)) + int(np.count_nonzero(tm))
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pm & tm)) / denom


def dice_score(pred: ArrayLike, gt: ArrayLike) -> float:
    """Binary Dice ``2|P∩G| / (|P| + |G|)`` of two masks (numpy or torch; bool or int, non-zero is foreground).

    ``(*spatial)`` masks of the same shape; both empty → 1.0, one empty → 0.0.
    """
    p, t = same_shape(pred, gt)
    return _dice_of_masks(p != 0, t != 0)


def dice(pred: ArrayLike, target: ArrayLike, *,
         labels: Sequence[int] | None = None) -> float | dict[int, float]:
    """Dice of two label maps, binary or per label.

    Args:
        pred, target: ``(*spatial)`` label maps (bool/int), same shape.
        labels: ``None`` → binary (as :func:`dice_score`) and a float is returned; a list of label
            ids → ``{label: dice}``.
    """
    p, t = same_shape(pred, target)
    return per_label([(lab, _dice_of_masks(pm, tm)) for lab, pm, tm in label_masks(p, t, labels)])
