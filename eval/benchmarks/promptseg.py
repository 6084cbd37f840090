"""``radfm bench promptseg``: interactive 3D segmentation on real volumes vs two baselines.

What is measured (all on real scans from ``../shared/data`` whose subjects were never used for
training: the held-out split of ``radfm.tasks.segmentation.data.REAL_CASES``):

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
  the worst case), and per click (median over all clicks, embedding cached), in fp32 and bf16.
- **Peak memory** (max RSS) of this process, and with ``--memory`` of a subprocess that segments a
  512×512×400 CT (the real TotalSegmentator CT upsampled/tiled to that size) from one click.
- **Calibration** of the predicted IoU against the real Dice after click 1 (reliability bins).

Objects: CT organs (TotalSegmentator example: liver, spleen, kidneys, stomach; labels are
TotalSegmentator model output), brain MRI structures (VoxelMorph test scan, FreeSurfer labels:
cerebral white matter, lateral ventricle, cerebellum cortex, thalamus, brain stem), lesions with
manual outlines (pyradiomics brain1 MRI tumour, lung1/lung2 CT tumours).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radfm.eval.benchreport import add_output_args, default_md_path, machine_info, write_section
from radfm.io import canonical_index_to_native, load_volume
from radfm.io.volume import Volume
from radfm.tasks.segmentation.interaction import interactive_session
from radfm.tasks.segmentation.loading import load_segmenter
from radfm.tasks.segmentation.predictor import SegPredictor

NAME = "promptseg"
TITLE = "Prompt segmentation: Dice vs clicks on real CT/MRI, latency, memory, calibration"
CLICKS = (1, 3, 5, 10)
PLOT = "promptseg_dice_vs_clicks.png"
log = logging.getLogger(__name__)


@dataclass
class Target:
    group: str
    name: str
    volume: Volume
    gt: np.ndarray  # canonical bool


def _shared(root: Path | None) -> Path:
    from radfm.data.shared import shared_data_root

    found = shared_data_root(str(root) if root else None)
    if found is None or not (found / "MANIFEST.md").is_file():
        raise SystemExit("../shared/data not found: pass --data DIR (the real test volumes)")
    return found


def load_targets(data: Path, quick: bool = False) -> list[Target]:
    """The real objects of the benchmark (see module doc)."""
    out: list[Target] = []
    ts = data / "seg3d" / "totalsegmentator"
    ct = load_volume(ts / "example_ct_sm.nii.gz", modality="CT")
    seg = load_volume(ts / "example_seg.nii.gz").array
    organs = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6}
    for name, lid in list(organs.items())[: 2 if quick else None]:
        out.append(Target("CT organ", name, ct, seg == lid))
    npz = np.load(data / "seg3d" / "voxelmorph_brain" / "test_scan_uint8.npz")
    brain = Volume(array=npz["vol"].astype(np.float32) / 255.0, affine=np.eye(4), modality="MR")
    structures = {"cerebral white matter (L)": 2, "lateral ventricle (L)": 4, "cerebellum cortex (L)": 8,
                  "thalamus (L)": 10, "brain stem": 16}
    for name, lid in list(structures.items())[: 1 if quick else None]:
        out.append(Target("brain MRI structure", name, brain, npz["seg"] == lid))
    py = data / "seg3d" / "pyradiomics"
    lesions = [("brain tumour (MRI)", "brain1", "MR"), ("lung tumour 1 (CT)", "lung1", "CT"),
               ("lung tumour 2 (CT)", "lung2", "CT")]
    for name, stem, mod in lesions[: 1 if quick else None]:
        img = load_volume(py / f"{stem}_image.nrrd", modality=mod)
        lab = load_volume(py / f"{stem}_label.nrrd").array > 0
        out.append(Target("lesion", name, img, lab))
    return out


# ----------------------------------------------------------------------------- the two methods
def model_session(predictor: SegPredictor, target: Target, n_clicks: int,
                  ) -> tuple[list[float], list[float], list[tuple[float, float, float | None]]]:
    """Dice per click, per-click seconds and (predicted IoU, stability, expected Dice) per click."""
    times: list[float] = []
    scores: list[tuple[float, float, float | None]] = []

    def predict(points: np.ndarray, labels: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        native = canonical_index_to_native(points, target.volume)
        t = time.perf_counter()
        r = predictor.predict(points=native, labels=labels, mask_input=state, multimask=len(points) == 1)
        times.append(time.perf_counter() - t)
        scores.append((r.score, float(r.stability or 0.0), r.expected_dice))
        return r.mask.astype(bool), r

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices, times, scores


def click_ball_session(target: Target, n_clicks: int, radius_mm: float) -> list[float]:
    """The image-blind baseline: union of balls (``radius_mm``) at positive clicks minus balls at negative ones."""
    sp = np.asarray(target.volume.spacing, float)
    shape = np.asarray(target.gt.shape)
    half = np.ceil(radius_mm / sp).astype(int)

    def predict(points: np.ndarray, labels: np.ndarray, _state: Any) -> tuple[np.ndarray, Any]:
        pos = np.zeros(target.gt.shape, bool)
        neg = np.zeros(target.gt.shape, bool)
        for p, lab in zip(points, labels):
            c = np.rint(p).astype(int)
            lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, shape)
            if np.any(hi <= lo):
                continue
            grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            d2 = sum(((g - ci) * si) ** 2 for g, ci, si in zip(grids, c, sp))
            region = (pos if lab == 1 else neg)[tuple(slice(a, b) for a, b in zip(lo, hi))]
            region |= d2 <= radius_mm**2
        return pos & ~neg, None

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices + [dices[-1]] * (n_clicks - len(dices))


BALL_RADII_MM = (4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 24.0, 32.0, 45.0)


def random_walker_session(predictor: SegPredictor, target: Target, n_clicks: int, *, beta: float = 1000.0,
                          seed_radius: int = 2, clip_k: float = 6.0) -> tuple[list[float], list[float]]:
    """The classical baseline on the same click protocol and the same model-grid window.

    Each click seeds a small ball (``seed_radius`` model voxels, 6 mm) rather than one voxel (a lone
    voxel seed has almost no pull in 3D), the window border is background, and intensities are
    clipped to ±``clip_k`` robust SDs around the first click's (so soft-tissue contrast is not
    flattened by air and bone). These settings were chosen on phantoms (beta 130/1000, k 3/6/12),
    not on the benchmark objects.
    """
    from scipy import ndimage
    from skimage.segmentation import random_walker

    times: list[float] = []
    img = predictor.prepared.tensor[0].numpy()
    state: dict[str, Any] = {"window": None}
    ball_se = ndimage.generate_binary_structure(3, 1)

    def predict(points: np.ndarray, labels: np.ndarray, _state: Any) -> tuple[np.ndarray, Any]:
        model_pts = predictor.canonical_to_model(points)
        if state["window"] is None:  # the window the model would embed for the first click, kept after
            state["window"] = predictor.window_for(model_pts[:1])
        window = state["window"]
        crop = img[tuple(slice(s, e) for s, e in window)]
        seeds = np.zeros(crop.shape, dtype=np.int32)
        seeds[0], seeds[-1] = 2, 2
        seeds[:, 0], seeds[:, -1] = 2, 2
        seeds[:, :, 0], seeds[:, :, -1] = 2, 2
        off = np.array([s for s, _ in window])
        for p, lab in zip(model_pts, labels):
            q = np.clip(np.rint(p - off).astype(int), 0, np.array(crop.shape) - 1)
            ball = np.zeros(crop.shape, dtype=bool)
            ball[tuple(q)] = True
            seeds[ndimage.binary_dilation(ball, ball_se, iterations=seed_radius)] = 1 if lab else 2
        if "clip" not in state:
            fg = crop[seeds == 1]
            i0 = float(np.median(fg))
            sd = max(1.4826 * float(np.median(np.abs(fg - i0))), 0.01)
            state["clip"] = (i0 - clip_k * sd, i0 + clip_k * sd)
        t = time.perf_counter()
        seg = random_walker(np.clip(crop, *state["clip"]), seeds, beta=beta, mode="cg_j", tol=1e-2)
        times.append(time.perf_counter() - t)
        logits = torch.from_numpy(np.where(seg == 1, 1.0, -1.0).astype(np.float32))
        return predictor.logits_to_canonical(logits, window).astype(bool), None

    dices, _ = interactive_session(predict, target.gt, n_clicks, spacing=target.volume.spacing)
    return dices, times


def _class_prompt_dice(predictor: SegPredictor, targets: list[Target]) -> dict[str, float]:
    """Dice of ``class_name`` alone (no click) for the CT organs whose names the model knows."""
    from radfm.metrics import dice_score
    from radfm.tasks.segmentation.data import canonical_class_name

    out: dict[str, float] = {}
    known = {c.lower() for c in predictor.model.config.class_names}
    for tgt in targets:
        name = canonical_class_name(tgt.name)
        if tgt.group != "CT organ" or name is None or name not in known:
            continue
        predictor.set_volume(tgt.volume)
        r = predictor.predict(class_name=name)
        out[name] = round(dice_score(r.mask > 0, tgt.gt), 4)
    return out


# ----------------------------------------------------------------------------- latency / memory
def _embedding_latency(model: Any, dtype: str, repeats: int = 3) -> dict[str, float]:
    """Seconds to embed (a) a 128³ 1 mm volume through set_volume, (b) a 128³ model-grid tensor."""
    rng = np.random.default_rng(0)
    vol = Volume(array=(rng.normal(0, 30, (128, 128, 128)) + 40).astype(np.float32), affine=np.eye(4), modality="CT")
    pred = SegPredictor(model, dtype=dtype)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        pred.set_volume(vol)
        ts.append(time.perf_counter() - t)
    x = torch.randn(1, 1, 128, 128, 128)
    tg = []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            model.get_image_embeddings(x, torch.tensor([0]))
        tg.append(time.perf_counter() - t)
    return {"set_volume_128_1mm_s": statistics.median(ts), "embed_128_model_grid_s": statistics.median(tg)}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_MEMORY_CHILD = r"""
import json, resource, sys, time
import radfm
from radfm.tasks.segmentation.files import segment_file
t = time.perf_counter()
s = segment_file(sys.argv[1], out=sys.argv[2], points=[json.loads(sys.argv[3])], labels=[1])
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "seconds": time.perf_counter() - t, "voxels": s["voxels"], "score": s["score"]}))
"""


def big_ct(data: Path, out: Path, shape: tuple[int, int, int] = (512, 512, 400)) -> tuple[Path, list[float]]:
    """The real TotalSegmentator CT (122×101×112 at 3 mm) upsampled to ``shape`` (int16 NIfTI), and a click
    on the liver in native voxel indices. Built slab by slab so the parent stays small too."""
    import nibabel as nib
    from scipy import ndimage

    src = nib.load(data / "seg3d" / "totalsegmentator" / "example_ct.nii.gz")
    arr = np.asarray(src.dataobj, dtype=np.float32)
    factors = [n / s for n, s in zip(shape, arr.shape)]
    aff = src.affine.copy()
    aff[:3, :3] = aff[:3, :3] / np.asarray(factors)[None, :]
    big = np.empty(shape, dtype=np.int16)
    step = 40
    for z0 in range(0, shape[2], step):
        z1 = min(z0 + step, shape[2])
        zs = (np.arange(z0, z1) + 0.5) / factors[2] - 0.5
        xs = (np.arange(shape[0]) + 0.5) / factors[0] - 0.5
        ys = (np.arange(shape[1]) + 0.5) / factors[1] - 0.5
        grid = np.meshgrid(xs, ys, zs, indexing="ij")
        big[:, :, z0:z1] = ndimage.map_coordinates(arr, grid, order=1, mode="nearest").astype(np.int16)
    nib.save(nib.Nifti1Image(big, aff), out)
    # Click: the liver's most interior voxel from the TotalSegmentator labels of the same CT (its slices
    # 82–111 are example_ct_sm, which the labels cover), mapped to the upsampled grid.
    seg = np.asarray(nib.load(data / "seg3d" / "totalsegmentator" / "example_seg.nii.gz").dataobj) == 5
    dist = ndimage.distance_transform_edt(seg)
    c = np.array(np.unravel_index(int(np.argmax(dist)), seg.shape), float) + np.array([0.0, 0.0, 82.0])
    click = [float((c[a] + 0.5) * factors[a] - 0.5) for a in range(3)]
    return out, click


def memory_run(data: Path, shape: tuple[int, int, int] = (512, 512, 400)) -> dict[str, Any]:
    """Segment a ``shape`` CT from one click in a fresh subprocess; returns its peak RSS and time."""
    with tempfile.TemporaryDirectory() as tmp:
        path, click = big_ct(data, Path(tmp) / "big_ct.nii", shape)
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(path), str(Path(tmp) / "mask.nii.gz"),
                               json.dumps(click)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["shape"] = list(shape)
        return res


# ----------------------------------------------------------------------------- the run
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


def real_calibration(pairs: list[tuple[int, float, float, float]], *, out_dir: Path | None, write: bool) -> dict[str, Any]:
    """Fit the quality → expected-Dice map on real held-out objects, scored leave-one-object-out.

    Every click of every object is one (quality, stability, Dice) sample. For each object the map is
    fitted on the other objects' samples and applied to its own: Spearman of expected vs real Dice,
    mean |expected − real|, and how often ``low_confidence`` (expected < 0.5) is right, against the
    best constant answer. With ``write`` the map fitted on all objects goes to ``calibration.json``.
    """
    from radfm.tasks.segmentation.calibration import fit_best_calibration, quality_signal
    from radfm.tasks.segmentation.loading import CALIBRATION_FILENAME, default_model_dir

    obj = np.array([p[0] for p in pairs])
    q = np.array([p[1] for p in pairs], float)
    st = np.array([p[2] for p in pairs], float)
    dice = np.array([p[3] for p in pairs], float)
    kinds = ("iou", "stability@1", "iou_x_stability@1")
    sig = {k: np.asarray(quality_signal(k, q, st), float) for k in kinds}
    expected = np.zeros_like(dice)
    for o in np.unique(obj):
        tr = obj != o
        cal = fit_best_calibration({k: v[tr] for k, v in sig.items()}, dice[tr])
        expected[~tr] = cal.expected_dice(sig[cal.signal][~tr])
    low_true = dice < 0.5
    flag_acc = float(np.mean((expected < 0.5) == low_true))
    const_acc = float(max(low_true.mean(), 1 - low_true.mean()))
    ra, rb = np.argsort(np.argsort(expected)), np.argsort(np.argsort(dice))
    out = {"n_samples": len(dice), "n_objects": len(np.unique(obj)),
           "loo_spearman": float(np.corrcoef(ra, rb)[0, 1]) if np.std(expected) > 0 else None,
           "loo_mae": float(np.mean(np.abs(expected - dice))), "loo_low_confidence_accuracy": flag_acc,
           "constant_accuracy": const_acc}
    if write:
        full = fit_best_calibration(sig, dice, note=f"{len(dice)} clicks on {out['n_objects']} REAL held-out objects "
                                    "(radfm bench promptseg); leave-one-object-out figures in stats")
        full.stats.update({f"loo_{k}": v for k, v in out.items() if k.startswith("loo_")})
        full.save(Path(out_dir or default_model_dir()) / CALIBRATION_FILENAME)
        out["signal"] = full.signal
    return out


def _mean_at(rows: list[list[float]], k: int) -> float:
    return float(np.mean([r[k - 1] for r in rows]))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the ``promptseg`` section of docs/benchmarks.md, the JSON and the plot."""
    from radfm.tasks.segmentation.calibration import quality_signal, reliability
    from radfm.viz import save_curve

    args = _parser().parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _shared(args.data)
    model = load_segmenter(args.model)
    targets = load_targets(data, quick=args.quick)
    per_object: list[dict[str, Any]] = []
    model_rows, rw_rows, click_times, rw_times, cal_pairs = [], [], [], [], []
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
        rw_times += t_rw
        cal_pairs.append((scores[0], d_model[0]))
        all_pairs += [(i_obj, sc[0], sc[1], d) for sc, d in zip(scores, d_model)]
        per_object.append({"group": tgt.group, "object": tgt.name, "voxels": int(tgt.gt.sum()),
                           "model": [round(v, 4) for v in d_model], "random_walker": [round(v, 4) for v in d_rw],
                           "score_click1": round(scores[0][0], 4), "stability_click1": round(scores[0][1], 4),
                           "expected_dice_click1": scores[0][2]})
        print(f"{tgt.group:20s} {tgt.name:28s} model {[round(d_model[k - 1], 3) for k in CLICKS if k <= args.clicks]} "
              f"rw {[round(d_rw[k - 1], 3) for k in CLICKS if k <= args.clicks]}", flush=True)
    clicks = [k for k in CLICKS if k <= args.clicks]
    # the oracle: per click count, the radius that is best over all objects
    best_r = {k: max(BALL_RADII_MM, key=lambda r, k=k: _mean_at(ball_by_radius[r], k)) for k in range(1, args.clicks + 1)}
    ball_rows = [[ball_by_radius[best_r[k]][i][k - 1] for k in range(1, args.clicks + 1)] for i in range(len(targets))]
    for i, po in enumerate(per_object):
        po["click_ball_oracle"] = [round(v, 4) for v in ball_rows[i]]
    class_prompt = _class_prompt_dice(predictor, targets)
    rows = []
    for group in [*dict.fromkeys(t.group for t in targets), "all"]:
        sel = [i for i, t in enumerate(targets) if group in ("all", t.group)]
        for method, table in (("radfm promptseg", model_rows), ("random walker", rw_rows),
                              ("click-ball oracle", ball_rows)):
            row: dict[str, Any] = {"objects": group, "method": method, "n": len(sel)}
            for k in clicks:
                row[f"Dice@{k}"] = _mean_at([table[i] for i in sel], k)
            rows.append(row)
    gain = {k: _mean_at(model_rows, k) - max(_mean_at(rw_rows, k), _mean_at(ball_rows, k)) for k in clicks}
    lat = {dt: _embedding_latency(model, dt) for dt in ("fp32", "bf16")}
    per_click = {"fp32": statistics.median(click_times) if click_times else float("nan")}
    # per-click latency in bf16 on the first target (embedding cached)
    pb = SegPredictor(model, dtype="bf16")
    pb.set_volume(targets[0].volume)
    _, tb, _ = model_session(pb, targets[0], min(args.clicks, 5))
    per_click["bf16"] = statistics.median(tb[1:]) if len(tb) > 1 else float("nan")
    scores = np.array([s[0] for s, _ in cal_pairs])
    stabs = np.array([s[1] for s, _ in cal_pairs])
    expected = [s[2] for s, _ in cal_pairs]
    dices = np.array([d for _, d in cal_pairs])
    cal = getattr(predictor, "calibration", None)
    offset = (cal.stability_offset if cal is not None else None) or 1.0  # what the predictor measured

    def rho(a: np.ndarray) -> float | None:
        if len(a) < 3 or np.std(a) == 0:
            return None
        return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(dices)))[0, 1])

    calib = {"reliability_raw": reliability(scores, dices, n_bins=3),
             "mae_raw": float(np.mean(np.abs(scores - dices))),
             "signal": cal.signal if cal is not None else None,
             "mae_calibrated": float(np.mean(np.abs(np.array(expected, float) - dices)))
             if cal is not None and None not in expected else None,
             "spearman": rho(scores),
             "spearman_by_signal": {k: rho(np.asarray(quality_signal(k, scores, stabs), float))
                                    for k in ("iou", f"stability@{offset:g}", f"iou_x_stability@{offset:g}")}}
    calib["real_fit"] = real_calibration(all_pairs, out_dir=args.model or None if args.write_calibration else None,
                                         write=args.write_calibration)
    memory = memory_run(data) if args.memory else None
    results = {"clicks": clicks, "objects": per_object, "gain_vs_best_baseline": gain, "embedding_s": lat,
               "ball_radius_mm_by_clicks": best_r, "class_prompt_dice": class_prompt,
               "per_click_s_median": per_click, "random_walker_s_median": statistics.median(rw_times),
               "peak_rss_mib_this_process": _maxrss_mib(), "memory_512x512x400": memory, "calibration": calib,
               "dtype_dice": "fp32"}
    plot = args.plot or (args.out or default_md_path()).parent / PLOT
    if not args.no_write:
        xs = list(range(1, args.clicks + 1))
        save_curve(plot, xs, {"radfm promptseg": [_mean_at(model_rows, k) for k in xs],
                              "random walker": [_mean_at(rw_rows, k) for k in xs],
                              "click-ball oracle": [_mean_at(ball_rows, k) for k in xs]},
                   xlabel="simulated clicks", ylabel=f"mean Dice ({len(targets)} real objects)",
                   title="Interactive segmentation on real CT/MRI")
        _write(args, argv, rows, results, gain, lat, per_click, memory, calib, plot)
    return results


def _real_fit_text(fit: dict[str, Any] | None) -> str:
    if not fit:
        return ""
    rho = fit["loo_spearman"]
    return (f"Calibration fitted on REAL held-out objects ({fit['n_samples']} clicks on {fit['n_objects']} objects), "
            f"scored leave-one-object-out: Spearman(expected, real Dice) {rho if rho is None else round(rho, 3)}, "
            f"mean |expected − real| {fit['loo_mae']:.3f}; `low_confidence` (expected < 0.5) right "
            f"{100 * fit['loo_low_confidence_accuracy']:.0f} % of the time vs {100 * fit['constant_accuracy']:.0f} % "
            f"for the best constant answer." + (f" Shipped signal: `{fit['signal']}`." if fit.get("signal") else ""))


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]], results: dict[str, Any],
           gain: dict[int, float], lat: dict[str, dict[str, float]], per_click: dict[str, float],
           memory: dict[str, Any] | None, calib: dict[str, Any], plot: Path) -> None:
    md = args.out or default_md_path()
    g1, g5 = gain.get(1, float("nan")), gain.get(5, float("nan"))
    met = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    emb = lat["fp32"]["set_volume_128_1mm_s"]
    emb128 = lat["fp32"]["embed_128_model_grid_s"]
    emb128_bf = lat["bf16"]["embed_128_model_grid_s"]
    d5 = results["objects"] and float(np.mean([o["model"][min(4, len(o["model"]) - 1)] for o in results["objects"]]))
    liver = next((o["model"][0] for o in results["objects"] if o["object"] == "liver"), float("nan"))
    cls = results.get("class_prompt_dice") or {}
    goals = [
        f"Dice ≥ best baseline (random walker or click-ball oracle) + 0.15 at 1 click: {g1:+.3f} → {met(g1 >= 0.15)}; "
        f"at 5 clicks: {g5:+.3f} → {met(g5 >= 0.15)}.",
        f"Dice ≥ 0.75 at 5 clicks: {d5:.3f} → {met(d5 >= 0.75)}; liver (example CT) ≥ 0.80 at 1 click: {liver:.3f} → "
        f"{met(liver >= 0.80)}.",
        f"Per click after the embedding (a decoder pass over the window, up to 128³ at 2 mm; early-fusion goal "
        f"≤ 1 s): fp32 {1000 * per_click['fp32']:.0f} ms, bf16 {1000 * per_click['bf16']:.0f} ms → "
        f"{met(min(per_click['fp32'], per_click['bf16']) <= 1.0)}.",
        f"Embedding: a 128³ CT at 1 mm through set_volume fp32 {emb:.2f} s, bf16 "
        f"{lat['bf16']['set_volume_128_1mm_s']:.2f} s; the encoder on a 128³ model grid fp32 {emb128:.2f} s, "
        f"bf16 {emb128_bf:.2f} s.",
        "Class prompt alone (`--structure NAME`, no click), Dice: "
        + (", ".join(f"{k} {v:.3f}" for k, v in cls.items()) or "n/a") + ".",
    ]
    if memory is not None:
        goals.append(f"512×512×400 CT from one click: peak RSS {memory['maxrss_mib']:.0f} MiB in "
                     f"{memory['seconds']:.1f} s → {met(memory['maxrss_mib'] <= 4096)} (≤ 4 GiB).")
    rel = "; ".join(f"score {r['score_lo']:.2f}–{r['score_hi']:.2f}: mean score {r['mean_score']:.2f} vs Dice "
                    f"{r['mean_dice']:.2f} (n={r['n']})" for r in calib["reliability_raw"])
    mc = calib["mae_calibrated"]
    notes = "\n".join([
        "Goals of the issue: " + " ".join(f"({i + 1}) {g}" for i, g in enumerate(goals)),
        "",
        "Method: real held-out volumes only (TotalSegmentator example CT organs — its labels are model output —, "
        "the VoxelMorph T1 brain with FreeSurfer labels, pyradiomics tumours with manual outlines); the shipped "
        "model never saw these subjects (its training split: docs/benchmarks.md and the model card). Same click "
        "protocol for every method (click 1 at the object's most interior "
        "voxel, then at the interior of the largest error component of that method's own mask). The random walker "
        "(scikit-image, beta 1000, cg_j, tol 1e-2) runs on the same 2 mm normalised window the model sees "
        "(clipped to ±6 robust SD around the first click's intensity), seeded with 6 mm balls at the positive "
        "and negative clicks and with the window border as background (settings chosen on phantoms). One "
        "seed against a whole border is a weak start for a random walker; it catches up with more clicks. "
        "The click-ball oracle's radius per click count: "
        + ", ".join(f"{k}: {r:g} mm" for k, r in results["ball_radius_mm_by_clicks"].items()) + ". "
        "Dice on the scan's own grid, fp32.",
        "",
        f"Calibration after click 1 on these real objects. Predicted IoU: {rel}; mean |predicted IoU − Dice| "
        f"{calib['mae_raw']:.3f}. The calibration loaded at the start of this run reads the `{calib['signal']}` "
        "signal" + (f": mean |expected Dice − Dice| {mc:.3f}" if mc is not None else " (none was loaded)")
        + ". Spearman rank correlation with real Dice by signal: "
        + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in calib["spearman_by_signal"].items())
        + ".",
        "",
        _real_fit_text(calib.get("real_fit")),
        "",
        f"Peak RSS of the benchmark process: {results['peak_rss_mib_this_process']:.0f} MiB. Random-walker solve: "
        f"median {results['random_walker_s_median']:.2f} s per click. Plot: `{plot.name}`.",
        "",
        f"![Dice vs clicks]({plot.name})",
    ])
    command = "radfm bench promptseg " + shlex.join(list(argv or []))
    write_section(md, NAME, title=TITLE, command=command.strip(), table=rows, notes=notes,
                  json_path=args.json_path, results=results, machine=machine_info())
