"""Pieces of ``radfm bench promptseg`` that run without the real data or a model.

The full benchmark needs ../shared/data and minutes of CPU; these check the image-blind baseline,
the leave-one-object-out calibration and the docs section writer on synthetic inputs.
"""

from __future__ import annotations

import argparse

import numpy as np

from radfm.eval.benchmarks.promptseg import NAME, Target, click_ball_session, real_calibration
from radfm.eval.benchmarks.promptseg_calibration import click1_calibration
from radfm.eval.benchmarks.promptseg_report import write_report
from radfm.io.volume import Volume


def _sphere_target(radius_vox: float = 6.0, spacing: float = 2.0) -> Target:
    shape = (32, 32, 32)
    zz, yy, xx = np.indices(shape)
    gt = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= radius_vox**2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    vol = Volume(array=np.zeros(shape, np.float32), affine=affine, modality="CT")
    return Target("phantom", "sphere", vol, gt)


def test_click_ball_matches_a_sphere_at_its_radius_in_mm() -> None:
    tgt = _sphere_target(radius_vox=6.0, spacing=2.0)  # a 12 mm sphere
    right = click_ball_session(tgt, 1, radius_mm=12.0)
    small = click_ball_session(tgt, 1, radius_mm=4.0)
    assert right[0] > 0.9, right
    assert small[0] < 0.2, small
    assert len(click_ball_session(tgt, 3, radius_mm=4.0)) == 3  # padded to the click count


def test_real_calibration_ranks_by_quality_leave_one_object_out() -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for obj in range(6):
        for _ in range(5):
            d = float(rng.uniform(0.05, 0.95))
            pairs.append((obj, float(np.clip(d + rng.normal(0, 0.05), 0, 1)), 0.5, d))
    out = real_calibration(pairs, out_dir=None, write=False)
    assert out["n_objects"] == 6 and out["n_samples"] == 30
    assert out["loo_spearman"] > 0.8, out
    assert out["loo_low_confidence_accuracy"] >= out["constant_accuracy"], out


def test_click1_calibration_without_a_loaded_map() -> None:
    pairs = [((0.9, 0.8, None), 0.85), ((0.5, 0.4, None), 0.45), ((0.2, 0.1, None), 0.1)]
    cal = click1_calibration(pairs, None)
    assert cal["signal"] is None and cal["mae_calibrated"] is None
    assert abs(cal["mae_raw"] - np.mean([0.05, 0.05, 0.1])) < 1e-9
    assert cal["spearman"] == 1.0


def test_report_says_which_goals_are_met(tmp_path) -> None:
    md = tmp_path / "benchmarks.md"
    args = argparse.Namespace(out=md, json_path=tmp_path / "promptseg.json")
    objects = [{"object": "liver", "model": [0.85, 0.9, 0.9, 0.9, 0.9]}, {"object": "x", "model": [0.3] * 5}]
    results = {"objects": objects, "ball_radius_mm_by_clicks": {1: 10.0}, "class_prompt_dice": {"liver": 0.8},
               "peak_rss_mib_this_process": 900.0, "random_walker_s_median": 0.5}
    calib = {"reliability_raw": [], "mae_raw": 0.1, "mae_calibrated": None, "signal": None,
             "spearman_by_signal": {"iou": 0.5}, "real_fit": None}
    lat = {dt: {"set_volume_128_1mm_s": 1.0, "embed_128_model_grid_s": 2.0} for dt in ("fp32", "bf16")}
    write_report(args, ["--quick"], [{"method": "radfm promptseg", "Dice@1": 0.5}], results,
                 {1: 0.2, 5: 0.05}, lat, {"fp32": 0.3, "bf16": 0.2}, None, calib, tmp_path / "plot.png")
    text = md.read_text()
    assert f"<!-- bench:{NAME}:start -->" in text
    assert "at 1 click: +0.200 → **met**" in text
    assert "at 5 clicks: +0.050 → **not met**" in text
    assert "radfm bench promptseg --quick" in text
    assert (tmp_path / "promptseg.json").is_file()
