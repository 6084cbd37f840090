"""Training-sample selection: large objects are prompted often enough to be learned."""

from __future__ import annotations

import numpy as np
import torch

from radfm.tasks.segmentation.cases import TrainCase
from radfm.tasks.segmentation.data import pseudo_mask_labels
from radfm.tasks.segmentation.sampling import _size_weighted


def test_a_large_organ_among_many_small_labels_is_drawn_in_proportion_to_its_size() -> None:
    labels = np.zeros((40, 40, 40), np.int16)
    labels[2:38, 2:30, 2:38] = 1  # one organ of ~36k voxels
    for k in range(2, 32):  # thirty ribs of 8 voxels each
        labels[39, k, 0:8] = k
    case = TrainCase(image=torch.zeros(1, 40, 40, 40), labels=labels,
                     targets={k: f"label {k}" for k in range(1, 32)}, modality_id=0, spacing=(2.0,) * 3)
    rng = np.random.default_rng(0)
    draws = [_size_weighted(case, list(case.targets), rng) for _ in range(2000)]
    share = np.mean(np.asarray(draws) == 1)
    # uniform choice would give 1/31 = 3 %; √size weighting gives √36288 / (√36288 + 30·√8) ≈ 69 %
    assert 0.6 < share < 0.8


def test_pseudo_masks_include_organ_sized_homogeneous_regions() -> None:
    """A homogeneous block of 12 % of the volume (the old 3 % cap dropped it) is one pseudo region."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 0.02, (48, 48, 48)).astype(np.float32)
    img[4:28, 4:28, 4:28] += 0.6  # 13.8k voxels = 12.5 % of the volume
    img[30:44, 30:44, 30:44] -= 0.6
    regions = pseudo_mask_labels(img, np.random.default_rng(1))
    inside = regions[6:26, 6:26, 6:26]
    ids, counts = np.unique(inside[inside > 0], return_counts=True)
    assert len(ids) and counts.max() > 0.9 * inside.size  # one region covers the block's interior
