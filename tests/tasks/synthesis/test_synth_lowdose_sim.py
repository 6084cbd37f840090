"""The stated low-dose simulation: noise grows as dose falls (~1/sqrt(dose)), zero mean, filter matters."""

from __future__ import annotations

import numpy as np

from radfm.tasks.synthesis.data import phantom_hu, volume_hu
from radfm.tasks.synthesis.lowdose_sim import LowDoseModel, SliceSinograms, simulate_volume


def _slab() -> tuple[np.ndarray, tuple[float, float, float]]:
    hu, spacing = volume_hu(phantom_hu(3, shape=(64, 64, 8), spacing=(1.0, 1.0, 2.0)))
    hu = hu[2:5]  # three axial slices are enough
    return hu, spacing


def test_noise_scales_with_dose_and_filter() -> None:
    hu, (sz, sy, sx) = _slab()
    sino = SliceSinograms(hu, (sy + sx) / 2, sz, views=180)
    body = hu > -500
    std = {}
    for dose in (0.1, 0.4):
        n = sino.noise_hu(LowDoseModel(dose=dose, views=180), np.random.default_rng(0))
        assert abs(float(n[body].mean())) < 0.1 * float(n[body].std())  # unbiased noise
        std[dose] = float(n[body].std())
    # quantum noise: std ~ dose^-1/2, so 4x less dose -> ~2x the noise (electronic noise adds a little)
    assert 1.7 < std[0.1] / std[0.4] < 2.5
    hann = sino.noise_hu(LowDoseModel(dose=0.1, views=180, filter_name="hann"), np.random.default_rng(0))
    assert float(hann[body].std()) < 0.8 * std[0.1]  # Hann suppresses the high frequencies the ramp keeps


def test_simulated_volume_is_the_scan_plus_noise_and_deterministic() -> None:
    hu, (sz, _, sx) = _slab()
    model = LowDoseModel(dose=0.25, views=180)
    a = simulate_volume(hu, sx, sz, model, seed=5)
    b = simulate_volume(hu, sx, sz, model, seed=5)
    assert a.shape == hu.shape and np.array_equal(a, b)
    assert 5.0 < float(np.std(a - hu)) < 500.0
    assert not np.array_equal(a, simulate_volume(hu, sx, sz, model, seed=6))
