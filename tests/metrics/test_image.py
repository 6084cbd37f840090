"""PSNR, SSIM and MAE against closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfm.metrics import mae, psnr, ssim


def test_psnr() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((8, 9, 10))
    assert psnr(x, x, data_range=1.0) == float("inf")
    t = np.zeros((4, 4, 4))
    assert psnr(t + 2.0, t, data_range=10.0) == pytest.approx(10 * math.log10(100 / 4))
    y = x + rng.normal(scale=0.05, size=x.shape)
    mse = float(np.mean((x - y) ** 2))
    assert psnr(torch.from_numpy(y), x, data_range=1.0) == pytest.approx(10 * math.log10(1 / mse))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)


def test_ssim() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((12, 13, 14)).astype(np.float32)
    assert ssim(x, x, data_range=1.0) == pytest.approx(1.0)
    noisy = ssim(x + rng.normal(scale=0.2, size=x.shape), x, data_range=1.0)
    assert 0.0 < noisy < 0.9
    assert ssim(x[:4], x[:4], data_range=1.0) == pytest.approx(1.0)  # thin volume: window shrinks to 3


def test_mae_with_mask() -> None:
    p = np.array([1.0, 2.0, 3.0, 10.0])
    t = np.zeros(4)
    assert mae(p, t) == pytest.approx(4.0)
    assert mae(p, t, mask=np.array([1, 1, 0, 0])) == pytest.approx(1.5)
    assert math.isnan(mae(p, t, mask=np.zeros(4)))
