"""The 4D hook: ``propagate_labels`` carries a label map through a series of volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.data.deform import random_smooth_field, warp
from radfm.data.phantom import make_phantom
from radfm.errors import InputError
from radfm.io import Volume
from radfm.tasks.registration.propagate import propagate_labels


def _affine(origin_x: float) -> np.ndarray:
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[0, 3] = origin_x
    return a


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    labs = [v for v in np.unique(b) if v]
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labs]))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, modality="CT", shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0))


@pytest.mark.parametrize("chain", ["sequential", "direct"])
def test_geometry_only_series_propagates_labels_exactly(tiny_model, phantom, chain) -> None:
    """Volume t stores the same anatomy starting t voxels later (origin moved by 2t mm): with the
    identity network the labels of volume t are the base labels shifted by t voxels, exactly, with
    background where no earlier volume saw anatomy. Both chains give the same, integer labels."""
    img, lab = phantom.image.array, phantom.labels.array
    vols, truth = [], []
    for t in range(4):
        a = np.full_like(img, img.min())
        a[: 32 - t] = img[t:]
        lt = np.zeros_like(lab)
        lt[: 32 - t] = lab[t:]
        vols.append(Volume(a, _affine(2.0 * t), "CT"))
        truth.append(lt)
    labels0 = Volume(lab, _affine(0.0), "CT")
    out = propagate_labels(vols, labels0, model=tiny_model, chain=chain)
    assert len(out) == 4 and out[0] is labels0
    for t in range(1, 4):
        assert out[t].shape == vols[t].shape and np.allclose(out[t].affine, vols[t].affine)
        assert out[t].array.dtype == lab.dtype
        assert np.array_equal(out[t].array, truth[t]), t


def test_shipped_model_tracks_a_breathing_like_series(phantom) -> None:
    """A SIMULATED 4D series: volume t = base warped by t/3 of one smooth field (motion growing over
    the phases). Propagating the base labels with the shipped model must beat copying them, at
    every phase, for both chains.

    Measured (seed 77; mean label Dice copied -> propagated at phases 1/2/3): copied 0.919 / 0.677 /
    0.571; sequential 0.925 / 0.740 / 0.610; direct 0.925 / 0.849 / 0.816 (seeds 78, 79 alike).
    On this small 32³ phantom the sequential chain loses detail at every nearest-neighbour step,
    so the direct chain is far better here. Bars: every phase improves, and the mean gain over the
    phases is at least 0.02 (sequential, measured 0.036) and 0.1 (direct, measured 0.141)."""
    torch.set_num_threads(1)
    img, lab = phantom.image.array, phantom.labels.array
    field = random_smooth_field(img.shape, spacing=(2.0, 2.0, 2.0), max_displacement_mm=8.0, smoothness_mm=24.0,
                                seed=77)
    vols, truth = [Volume(img, _affine(0.0), "CT")], [lab]
    for t in (1, 2, 3):
        vols.append(Volume(warp(img, field * (t / 3), order=1), _affine(0.0), "CT"))
        truth.append(warp(lab, field * (t / 3), order=0))
    for chain, bar in (("sequential", 0.02), ("direct", 0.1)):
        out = propagate_labels(vols, Volume(lab, _affine(0.0), "CT"), chain=chain)
        gains = []
        for t in (1, 2, 3):
            copied, propagated = _dice(lab, truth[t]), _dice(out[t].array, truth[t])
            assert propagated > copied, (chain, t, copied, propagated)
            assert out[t].array.dtype == lab.dtype and set(np.unique(out[t].array)) <= set(np.unique(lab))
            gains.append(propagated - copied)
        assert np.mean(gains) >= bar, (chain, gains)


def test_bad_arguments_are_input_errors(tiny_model, phantom) -> None:
    labels0 = Volume(phantom.labels.array, _affine(0.0), "CT")
    with pytest.raises(InputError):
        propagate_labels([], labels0, model=tiny_model)
    with pytest.raises(InputError):
        propagate_labels([phantom.image], labels0, model=tiny_model, chain="zigzag")  # type: ignore[arg-type]
    assert propagate_labels([phantom.image], labels0, model=tiny_model) == [labels0]
