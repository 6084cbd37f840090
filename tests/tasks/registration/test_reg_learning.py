"""Learning test: trained on SIMULATED phantom pairs with known fields, the model must register
held-out pairs (other phantoms, other fields) better than no registration.

Measured when the bar was set (2-core CPU shared with other jobs, torch 1 thread, this exact
recipe: 120 steps at lr 5e-3 on 32³ crops, field supervision): mean Dice of warped labels on the
three held-out pairs 0.683 without registration -> 0.710 after training (+0.028; every pair
improved: 0.669 -> 0.701, 0.638 -> 0.671, 0.742 -> 0.760). The bar: +0.015 on the mean (about half
the measured gain) and an improvement on every pair. Training takes 120 steps at ~1 s on the
loaded machine (about a third of that idle).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regtest_utils import tiny_config

from radfm.data.deform import make_phantom_pair
from radfm.tasks.registration.api import register
from radfm.tasks.registration.model import RadFMRegistration
from radfm.tasks.registration.train import TrainConfig, phantom_subjects, train

MARGIN = 0.015  # mean Dice gain over no registration (measured +0.028 with this recipe)


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    labs = [v for v in np.unique(b) if v]
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labs]))


@pytest.mark.slow
def test_training_on_known_fields_beats_no_registration_on_held_out_pairs() -> None:
    # One thread: small ops dominate here, and with two threads on a CPU shared with other jobs
    # OpenMP's spin-waiting made this test 8x slower (846 s instead of ~110 s).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RadFMRegistration(tiny_config(corr_min_stride=1))
    subjects = phantom_subjects(range(6), shape=(48, 48, 48))  # training phantoms: seeds 0-5
    cfg = TrainConfig(steps=120, crop_vox=(32,), lr=5e-3, warmup=10, w_sim=0.0, w_dice=0.0, seed=0, progress=False)
    history = train(model, subjects, cfg)
    assert history["skipped"] == 0
    before, after = [], []
    for seed in (101, 102, 103):  # held-out phantoms and fields
        pair = make_phantom_pair(seed, shape=(48, 48, 48), spacing=(2.0, 2.0, 2.0), max_displacement_mm=8.0)
        result = register(pair.fixed.image, pair.moving.image, model=model, labels=pair.moving.labels)
        before.append(_mean_dice(pair.moving.labels.array, pair.fixed.labels.array))
        after.append(_mean_dice(result.warped_labels.array, pair.fixed.labels.array))
        assert result.stats["folding_percent"] < 1.0
    assert np.mean(after) >= np.mean(before) + MARGIN, (before, after)
    assert all(a > b for a, b in zip(after, before)), (before, after)
