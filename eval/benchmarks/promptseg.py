"""``radfm bench promptseg``: interactive 3D segmentation on real volumes vs two baselines.

What is measured (on real scans from ``../shared/data`` whose subjects were never used for
training: the held-out split of ``radfm.tasks.segmentation.data.REAL_CASES``; the two lesions of
training subjects, brain1 and lung1, are listed apart and left out of every mean, fit and radius):

- **Dice after 1, 3, 5 (10) simulated clicks** for the shipped prompt segmenter, scikit-image's
  ``random_walker`` and the image-blind **click-ball oracle** (union of balls around the positive
  clicks minus balls around the negative ones, at the radius that scores best over all objects for
  that click count — chosen on the test objects, so an upper bound of image-blind answers), on the
  same protocol: click 1 at the object's most interior voxel, every next click at the interior of
  the largest error component of *that method's* current mask (missed object → positive, leakage
  → negative; ``radfm.tasks.segmentation.interaction.next_click``). The model and the random walker see
  the same input: the plan's resampled, normalised window around the clicks (2 mm, up to 128³);
  the random walker is seeded with the positive clicks (label 1), the negative clicks and the
  window border (label 2). Dice is measured on the scan's own grid after mapping back.
- **Class prompts**: ``--structure NAME`` alone (no click) on the CT organs the model knows.
- **Latency**: embedding (set_volume for a 128³ volume at 1 mm, and the encoder on a 128³ model grid,
  the worst case), the first click (every inference spacing, coarse embeddings included) and each
  later click (median, embedding cached), in fp32 and bf16.
- **Peak memory** (max RSS) of this process, and with ``--memory`` of a subprocess that segments a
  512×512×400 CT (the real TotalSegmentator CT upsampled/tiled to that size) from one click.
- **Calibration** of the predicted IoU against the real Dice after click 1 (reliability bins).

Objects: CT organs (TotalSegmentator example: liver, spleen, kidneys, stomach; labels are
TotalSegmentator model output), brain MRI structures (VoxelMorph test scan, FreeSurfer labels:
cerebral white matter, lateral ventricle, cerebellum cortex, thalamus, brain stem), lesions with
manual outlines (pyradiomics brain1 MRI tumour, lung1/lung2 CT tumours).

Pieces: the objects (``promptseg_targets``), the methods (``promptseg_methods``), latency and memory
(``promptseg_resources``), calibration (``promptseg_calibration``) and the docs section
(``promptseg_report``); this file parses the options and runs them in order.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radfm.eval.benchmarks.promptseg_calibration import click1_calibration, real_calibration
from radfm.eval.benchmarks.promptseg_methods import (
    BALL_RADII_MM,
    class_prompt_dice,
    click_ball_session,
    model_session,
    random_walker_session,
)
from radfm.eval.benchmarks.promptseg_report import NAME, PLOT, TITLE, write_report
from radfm.eval.benchmarks.promptseg_resources import big_ct, embedding_latency, maxrss_mib, memory_run
from radfm.eval.benchmarks.promptseg_targets import Target, load_targets, shared_root
from radfm.eval.benchreport import add_output_args, default_md_path
from radfm.tasks.segmentation.loading import load_segmenter
from radfm.tasks.segmentation.predictor import SegPredictor

__all__ = [
    "BALL_RADII_MM",
    "CLICKS",
    "NAME",
    "PLOT",
    "TITLE",
    "Target",
    "big_ct",
    "click_ball_session",
    "load_targets",
    "memory_run",
    "model_session",
    "random_walker_session",
    "real_calibration",
    "run",
]

CLICKS = (1, 3, 5, 10)
log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench promptseg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="../shared/data (real volumes)")
    p.add_argument("--model", type=Path, default=None, help="segmenter folder (default: the shipped one)")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--memory", action="store_true", help="also segment a 512×512×400 CT in a subprocess (peak RSS)")
    p.add_argument("--quick", action="store_true", help="a few objects only (smoke test)")
    p.add_argument("--write-calibration", action="store_true",
                   help="fit calibration.json on these real held-out objects and write it into the model folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot", type=Path, default=None, help=f"Dice-vs-clicks PNG (default docs/{PLOT})")
    add_output_args(p)
    return p


def _mean_at(rows: list[list[float]], k: int) -> float:
    return float(np.mean([r[k - 1] for r in rows]))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the ``promptseg`` section of docs/benchmarks.md, the JSON and the plot."""
    from radfm.viz import save_curve

    args = _parser().parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    data = shared_root(args.data)
    model = load_segmenter(args.model)
    targets = load_targets(data, quick=args.quick)
    per_object: list[dict[str, Any]] = []
    model_rows, rw_rows, click_times, first_times, rw_times, cal_pairs = [], [], [], [], [], []
    ball_by_radius: dict[float, list[list[float]]] = {r: [] for r in BALL_RADII_MM}
    all_pairs: list[tuple[int, float, float, float]] = []  # (object, quality, stability, Dice) per click
    current = None
    predictor = SegPredictor(model)
    for i_obj, tgt in enumerate(targets):
        if tgt.volume is not current:
            t = time.perf_counter()
            predictor.set_volume(tgt.volume)
            log.info("set_volume %s: %.2f s", tgt.name, time.perf_counter() - t)
            current = tgt.volume
        d_model, times, scores = model_session(predictor, tgt, args.clicks)
        d_rw, t_rw = random_walker_session(predictor, tgt, args.clicks)
        for r in BALL_RADII_MM:
            ball_by_radius[r].append(click_ball_session(tgt, args.clicks, r))
        model_rows.append(d_model)
        rw_rows.append(d_rw)
        click_times += times[1:]  # the first click of an object may embed a new window
        first_times.append(times[0])
        rw_times += t_rw
        if tgt.held_out:
            cal_pairs.append((scores[0], d_model[0]))
            all_pairs += [(i_obj, sc[0], sc[1], d) for sc, d in zip(scores, d_model)]
        per_object.append({"group": tgt.group, "object": tgt.name, "voxels": int(tgt.gt.sum()), "held_out": tgt.held_out,
                           "model": [round(v, 4) for v in d_model], "random_walker": [round(v, 4) for v in d_rw],
                           "score_click1": round(scores[0][0], 4), "stability_click1": round(scores[0][1], 4),
                           "expected_dice_click1": scores[0][2]})
        print(f"{tgt.group:20s} {tgt.name:28s} model {[round(d_model[k - 1], 3) for k in CLICKS if k <= args.clicks]} "
              f"rw {[round(d_rw[k - 1], 3) for k in CLICKS if k <= args.clicks]}", flush=True)
    clicks = [k for k in CLICKS if k <= args.clicks]
    held = [i for i, t in enumerate(targets) if t.held_out]
    # the oracle: per click count, the radius that is best over all held-out objects
    best_r = {k: max(BALL_RADII_MM, key=lambda r, k=k: _mean_at([ball_by_radius[r][i] for i in held], k))
              for k in range(1, args.clicks + 1)}
    ball_rows = [[ball_by_radius[best_r[k]][i][k - 1] for k in range(1, args.clicks + 1)] for i in range(len(targets))]
    for i, po in enumerate(per_object):
        po["click_ball_oracle"] = [round(v, 4) for v in ball_rows[i]]
    class_prompt = class_prompt_dice(predictor, [t for t in targets if t.held_out])
    rows = []
    for group in [*dict.fromkeys(t.group for t in targets), "all"]:
        sel = held if group == "all" else [i for i, t in enumerate(targets) if t.group == group]
        for method, table in (("radfm promptseg", model_rows), ("random walker", rw_rows),
                              ("click-ball oracle", ball_rows)):
            row: dict[str, Any] = {"objects": group, "method": method, "n": len(sel)}
            for k in clicks:
                row[f"Dice@{k}"] = _mean_at([table[i] for i in sel], k)
            rows.append(row)
    def held_mean(table: list[list[float]], k: int) -> float:
        return _mean_at([table[i] for i in held], k)

    gain = {k: held_mean(model_rows, k) - max(held_mean(rw_rows, k), held_mean(ball_rows, k)) for k in clicks}
    lat = {dt: embedding_latency(model, dt) for dt in ("fp32", "bf16")}
    per_click = {"fp32": statistics.median(click_times) if click_times else float("nan"),
                 "first_click_fp32": statistics.median(first_times)}
    # per-click latency in bf16 on the first target (embedding cached)
    pb = SegPredictor(model, dtype="bf16")
    pb.set_volume(targets[0].volume)
    _, tb, _ = model_session(pb, targets[0], min(args.clicks, 5))
    per_click["bf16"] = statistics.median(tb[1:]) if len(tb) > 1 else float("nan")
    calib = click1_calibration(cal_pairs, getattr(predictor, "calibration", None))
    calib["real_fit"] = real_calibration(all_pairs, out_dir=args.model or None if args.write_calibration else None,
                                         write=args.write_calibration)
    memory = memory_run(data) if args.memory else None
    results = {"clicks": clicks, "objects": per_object, "gain_vs_best_baseline": gain, "embedding_s": lat,
               "ball_radius_mm_by_clicks": best_r, "class_prompt_dice": class_prompt,
               "per_click_s_median": per_click, "random_walker_s_median": statistics.median(rw_times),
               "peak_rss_mib_this_process": maxrss_mib(), "memory_512x512x400": memory, "calibration": calib,
               "dtype_dice": "fp32"}
    plot = args.plot or (args.out or default_md_path()).parent / PLOT
    if not args.no_write:
        xs = list(range(1, args.clicks + 1))
        save_curve(plot, xs, {"radfm promptseg": [held_mean(model_rows, k) for k in xs],
                              "random walker": [held_mean(rw_rows, k) for k in xs],
                              "click-ball oracle": [held_mean(ball_rows, k) for k in xs]},
                   xlabel="simulated clicks", ylabel=f"mean Dice ({len(held)} real held-out objects)",
                   title="Interactive segmentation on real CT/MRI")
        write_report(args, argv, rows, results, gain, lat, per_click, memory, calib, plot)
    return results
