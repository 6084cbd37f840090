"""The preprocessing plan: saved beside weights, applied by one function, mapped back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.preprocess import PLAN_FILENAME, PreprocessPlan, apply_plan, restore_to_input


def _ct(shape=(40, 30, 20), spacing=(1.0, 1.0, 2.5)) -> Volume:
    rng = np.random.default_rng(0)
    arr = np.full(shape, -1000.0, np.float32)
    arr[5:35, 5:25, 2:18] = 40 + rng.normal(0, 10, (30, 20, 16))
    arr[15:20, 10:15, 8:12] = 700
    return Volume(array=arr, affine=np.diag([*spacing, 1.0]), modality="CT")


def test_plan_round_trips_through_json(tmp_path):
    plan = PreprocessPlan(modality="CT", target_spacing=(2.0, 2.0, 2.0), normalization="ct_window",
                          ct_window=(-200.0, 300.0), patch_size=(32, 32, 32), pad_multiple=(8, 8, 8))
    path = plan.save(tmp_path)
    assert path.name == PLAN_FILENAME and json.loads(path.read_text())["ct_window"] == [-200.0, 300.0]
    assert PreprocessPlan.load(tmp_path) == plan


def test_missing_or_bad_plan_is_named(tmp_path):
    with pytest.raises(ConfigError, match=PLAN_FILENAME):
        PreprocessPlan.load(tmp_path)
    (tmp_path / PLAN_FILENAME).write_text(json.dumps({"normalisation": "zscore"}))
    with pytest.raises(ConfigError, match="normalisation"):
        PreprocessPlan.load(tmp_path)


def test_apply_plan_orders_axes_windows_and_pads():
    vol = _ct()
    plan = PreprocessPlan(target_spacing=None, normalization="ct_window", ct_window=(-1000.0, 1000.0),
                          pad_multiple=(8, 8, 8))
    prep = apply_plan(vol, plan)
    assert prep.resampled_shape == (20, 30, 40)  # (D, H, W) = canonical (Z, Y, X)
    assert prep.tensor.shape == (1, 24, 32, 40)
    assert prep.spacing_dhw == (2.5, 1.0, 1.0)
    t = prep.tensor[0]
    assert t.min() >= -1 and t.max() <= 1
    # the bone voxel at canonical (17, 12, 10) sits at model (10, 12, 17)
    assert t[10, 12, 17] == pytest.approx((700 + 1000) / 2000 * 2 - 1, abs=1e-5)


def test_resample_and_restore_label_is_identity_on_the_grid():
    vol = _ct()
    plan = PreprocessPlan(target_spacing=(2.0, 2.0, 2.0), normalization="ct_window")
    prep = apply_plan(vol, plan)
    assert prep.resampled_shape == (25, 15, 20)
    truth = (vol.array > 500).astype(np.uint8)
    # a "model" that outputs a logit map of the truth on its own grid
    prob = torch.nn.functional.interpolate(torch.from_numpy(truth.transpose(2, 1, 0)[None, None]).float(),
                                           size=prep.resampled_shape, mode="trilinear", align_corners=False)[0]
    logits = torch.nn.functional.pad(prob - 0.5, (0, prep.pad[2], 0, prep.pad[1], 0, prep.pad[0]))
    back = restore_to_input(logits, prep, kind="label")
    assert back.shape == vol.shape
    inter = np.logical_and(back, truth).sum()
    assert 2 * inter / (back.sum() + truth.sum()) > 0.8


def test_modality_mismatch_is_an_input_error():
    vol = _ct()
    vol.modality = "MR"
    with pytest.raises(InputError, match="trained on CT"):
        apply_plan(vol, PreprocessPlan(modality="CT"))


def test_auto_normalisation_keeps_soft_tissue_contrast_on_ct_and_is_percentile_on_mr():
    """Liver (60 HU) next to spleen (45 HU): under p0.5..p99.5 (air to bone) they are ~1 % of the range
    apart, under "auto" (CT: tanh soft-tissue map) several times more; MR is unchanged."""
    arr = np.full((40, 30, 20), -1000.0, np.float32)
    arr[5:20, 5:25, 2:18], arr[20:35, 5:25, 2:18] = 60.0, 45.0
    arr[30:35, 5:25, 8:12] = 1200.0  # 1.7 % of the voxels: p99.5 is bone, as in a real CT
    ct = Volume(array=arr, affine=np.eye(4), modality="CT")
    auto = PreprocessPlan(target_spacing=None, normalization="auto")
    pct = PreprocessPlan(target_spacing=None, normalization="percentile")
    a, p = apply_plan(ct, auto).tensor[0], apply_plan(ct, pct).tensor[0]
    gap_auto = float(a[10, 10, 10] - a[10, 10, 25])  # model (D, H, W) = canonical (Z, Y, X)
    gap_pct = float(p[10, 10, 10] - p[10, 10, 25])
    assert gap_auto > 0.06 and gap_auto > 4 * gap_pct
    assert float(a.min()) > -1.0 and float(a.max()) < 1.0  # nothing clipped: HU order kept
    assert float(a[10, 10, 32]) > float(a[10, 10, 10])  # bone above soft tissue
    mr = Volume(array=np.abs(arr) + 1.0, affine=np.eye(4), modality="MR")
    assert torch.equal(apply_plan(mr, auto).tensor, apply_plan(mr, pct).tensor)
