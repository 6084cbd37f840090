"""``radfm bench registration``: radfm's registration model beside ANTs SyN on real brain MRI, in one run.

Tasks (real images; which part is simulated is said in every table note):

(a) **Real T1 brain, simulated deformations.** The VoxelMorph test scan (160×192×224, 1 mm,
    FreeSurfer ``seg``) is warped by smooth random fields (``radfm.data.deform.random_smooth_field``
    with seeds and magnitudes listed in the results, never used in training); each warped scan
    (moving, with its warped labels) is registered back onto the original (fixed). Scores: mean
    Dice and HD95 over the 30 standard structures (``labels.npz``), % voxels with non-positive
    Jacobian determinant, wall time per pair.
(b) **Inter-subject: Colin27 -> MNI152** (``registration/ants/ch2.nii.gz`` onto ``mni.nii.gz``,
    different grids). No labels exist for Colin27 on a grid we can check, so the scores are
    image similarity in the fixed space before/after (global NCC and normalised mutual
    information inside the fixed head mask) and folding.

Baselines run in the same process tree, same thread count: ANTs SyN (antspyx in its own venv,
``.venv-bench``, subprocess; ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``) with its default
``type_of_transform="SyN"`` (affine + SyN, MI), labels by ``genericLabel``; its folding is
measured on the Jacobian of its deformable warp (the affine part has a positive constant
determinant). Elastix runs only if the installed SimpleITK has ``ElastixImageFilter``.

radfm rows: the network alone (the default of ``register``) and the network followed by N steps of
instance optimisation (``--instance-steps 0,5,50``), which trades time for accuracy.

Timing: radfm = the whole ``register()`` call (input checks, resampling, network, warping of image
and labels, Jacobian statistics); SyN = ``ants.registration`` + label warping inside the
subprocess (its start-up and file I/O excluded). radfm's time is the median of ``--repeats`` runs
(default 3; a run lasts seconds), SyN runs once (minutes). CPU seconds of the registering process
are reported beside wall time. One pair at a time, after a warm-up call, with
both methods interleaved pair by pair (which goes first alternates) so that load from other jobs
on a shared machine hits both; the 1-minute load average at the start of every run is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.shared import shared_data_root
from radfm.eval.benchreport import add_output_args, default_md_path, machine_info, write_section

log = logging.getLogger(__name__)

NAME = "registration"
TITLE = "Registration: radfm vs ANTs SyN on real brain MRI"
#: (seed, max displacement mm, smoothness mm) of the default evaluation fields.
FIELDS = [(20261124, 6.0, 25.0), (20261125, 9.0, 30.0), (20261126, 4.0, 18.0), (20261127, 8.0, 22.0),
          (20261128, 11.0, 35.0), (20261129, 5.0, 20.0)]

_ANTS_SCRIPT = r"""
import json, resource, sys, time
import ants, numpy as np
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
d = sys.argv[1]
fixed = ants.image_read(d + "/fixed.nii.gz")
moving = ants.image_read(d + "/moving.nii.gz")
t0, c0 = time.perf_counter(), cpu()
reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", random_seed=1)
out = {"register_s": time.perf_counter() - t0, "register_cpu_s": cpu() - c0}
try:
    labels = ants.image_read(d + "/moving_labels.nii.gz")
    t1, c1 = time.perf_counter(), cpu()
    warped = ants.apply_transforms(fixed=fixed, moving=labels, transformlist=reg["fwdtransforms"],
                                   interpolator="genericLabel")
    out["labels_s"], out["labels_cpu_s"] = time.perf_counter() - t1, cpu() - c1
    ants.image_write(warped, d + "/ants_labels.nii.gz")
except FileNotFoundError:
    pass
except ValueError:
    pass
ants.image_write(reg["warpedmovout"], d + "/ants_warped.nii.gz")
jac = ants.create_jacobian_determinant_image(fixed, reg["fwdtransforms"][0])
ants.image_write(jac, d + "/ants_jac.nii.gz")
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- helpers
def _repo_root() -> Path:
    return default_md_path().parent.parent


def _bench_python(explicit: str | None) -> Path | None:
    """The python of the antspyx environment (``.venv-bench``), or None when absent."""
    cands = [Path(explicit)] if explicit else [_repo_root() / ".venv-bench" / "bin" / "python"]
    for c in cands:
        if c.is_file():
            return c
    return None


def _shared_data() -> Path:
    root = shared_data_root()
    if root is None or not (root / "MANIFEST.md").is_file():
        raise SystemExit(f"real data not found{f' at {root}' if root else ''}: set RADFM_SHARED_DATA "
                         "or place it at ../shared/data")
    return root


def _run_ants(py: Path, fixed: Any, moving: Any, moving_labels: np.ndarray | None, threads: int) -> dict[str, Any]:
    """ANTs SyN in the bench venv; returns timings, warped image/labels and the Jacobian (canonical arrays)."""
    from radfm.io import load_volume, save_like, save_volume

    with tempfile.TemporaryDirectory(prefix="radfm-ants-") as d:
        save_volume(fixed, Path(d) / "fixed.nii.gz")
        save_volume(moving, Path(d) / "moving.nii.gz")
        if moving_labels is not None:
            save_like(moving_labels, moving, Path(d) / "moving_labels.nii.gz")
        env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        proc = subprocess.run([str(py), "-c", _ANTS_SCRIPT, d], capture_output=True, text=True, env=env, check=False)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"ANTs failed: {proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["subprocess_s"] = total
        out["warped"] = load_volume(Path(d) / "ants_warped.nii.gz").array
        out["jac"] = load_volume(Path(d) / "ants_jac.nii.gz").array
        if (Path(d) / "ants_labels.nii.gz").is_file():
            out["labels"] = np.rint(load_volume(Path(d) / "ants_labels.nii.gz").array).astype(np.int32)
    return out


def _similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Global Pearson NCC and normalised MI (Studholme, 32 bins) of two images inside ``mask``."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    ncc = float(np.corrcoef(x, y)[0, 1])
    h, _, _ = np.histogram2d(x, y, bins=32)
    p = h / h.sum()
    px, py = p.sum(1), p.sum(0)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return {"ncc": ncc, "nmi": (ent(px) + ent(py)) / ent(p)}


def _label_scores(pred: np.ndarray, target: np.ndarray, labels: list[int], hd: bool) -> dict[str, float]:
    from radfm.metrics import dice, hd95

    d = dice(pred, target, labels=labels)
    out = {"dice": float(np.mean(list(d.values()))), "dice_min": float(min(d.values()))}
    if hd:
        h = hd95(pred, target, labels=labels, spacing=1.0)
        vals = [v for v in h.values() if np.isfinite(v)]
        out["hd95"] = float(np.mean(vals)) if vals else float("nan")
    return out


def _timed(fn: Any, repeats: int) -> tuple[Any, dict[str, Any]]:
    """Call ``fn`` ``repeats`` times; the last result and the median wall and CPU seconds (this process)."""
    walls, cpus, res = [], [], None
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return res, {"time_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)), "times_s": walls, "cpu_times_s": cpus}


def _key(steps: int) -> str:
    """Results key of a radfm variant: ``radfm`` (network only) or ``radfm_is50`` (+ 50 instance steps)."""
    return "radfm" if steps == 0 else f"radfm_is{steps}"


def _names(instance_steps: list[int]) -> dict[str, str]:
    return {_key(n): "radfm (shipped model)" + (f" + {n} instance steps" if n else "") for n in instance_steps}


# --------------------------------------------------------------------------- tasks
def _task_a(args: argparse.Namespace, py: Path | None, data: Path) -> tuple[list[dict], dict]:
    from radfm.data.deform import random_smooth_field
    from radfm.data.deform import warp as np_warp
    from radfm.io import Volume
    from radfm.tasks.registration.api import load_model, register

    vm = np.load(data / "seg3d/voxelmorph_brain/test_scan_uint8.npz")
    labels = [int(v) for v in np.load(data / "seg3d/voxelmorph_brain/labels.npz")["labels"]]
    vol = vm["vol"].astype(np.float32) / 255.0
    seg = vm["seg"].astype(np.int32)
    fixed = Volume(vol, np.eye(4), "MR", meta={"source": "voxelmorph test scan"})
    model = load_model(args.model)
    warm = register(fixed, fixed, model=model, instance_steps=min(1, max(args.instance_steps)))  # warm-up:
    log.info("warm-up %.2f s", warm.stats["runtime_s"])  # model load, caches, the MONAI loss import
    per_pair, raw = [], []
    for k, (seed, mag, smooth) in enumerate(FIELDS[: args.pairs]):
        field = random_smooth_field(vol.shape, max_displacement_mm=mag, smoothness_mm=smooth, seed=seed)
        moving = Volume(np_warp(vol, field, order=1), np.eye(4), "MR")
        moving_seg = np_warp(seg, field, order=0)
        mlab = Volume(moving_seg, np.eye(4), "MR")
        rec: dict[str, Any] = {"pair": k, "seed": seed, "max_displacement_mm": mag, "smoothness_mm": smooth}
        rec["none"] = {**_label_scores(moving_seg, seg, labels, args.hd95), "folding_percent": 0.0, "time_s": 0.0}

        def run_ours(rec: dict[str, Any] = rec, moving: Any = moving, mlab: Any = mlab) -> None:
            for steps in args.instance_steps:
                load = os.getloadavg()
                res, timing = _timed(lambda s=steps: register(fixed, moving, model=model, labels=mlab,
                                                              instance_steps=s), args.repeats)
                rec[_key(steps)] = {**_label_scores(res.warped_labels.array, seg, labels, args.hd95),
                                    "folding_percent": res.stats["folding_percent"], **timing,
                                    "timings_s": res.stats["timings_s"], "jacobian": res.stats["jacobian"],
                                    "load_average_at_start": load}

        def run_syn(rec: dict[str, Any] = rec, moving: Any = moving, moving_seg: Any = moving_seg) -> None:
            load = os.getloadavg()
            ants = _run_ants(py, fixed, moving, moving_seg, args.threads)
            fold = float(100.0 * np.count_nonzero(ants["jac"] <= 0) / ants["jac"].size)
            rec["ants_syn"] = {**_label_scores(ants["labels"], seg, labels, args.hd95), "folding_percent": fold,
                               "time_s": ants["register_s"] + ants.get("labels_s", 0.0),
                               "cpu_s": ants["register_cpu_s"] + ants.get("labels_cpu_s", 0.0),
                               "subprocess_s": ants["subprocess_s"], "load_average_at_start": load}

        # interleaved, alternating which method goes first, so that load from other jobs hits both alike
        order = [run_ours] + ([run_syn] if py is not None else [])
        for fn in (order if k % 2 == 0 else order[::-1]):
            fn()
        ours = [_key(n) for n in args.instance_steps]
        log.info("pair %d: %s", k, {m: round(rec[m]["dice"], 4) for m in ("none", *ours, "ants_syn") if m in rec})
        raw.append(rec)
    methods = [m for m in ("none", *ours, "ants_syn") if all(m in r for r in raw)]
    names = {"none": "no registration", **_names(args.instance_steps), "ants_syn": "ANTs SyN"}
    syn_t = float(np.mean([r["ants_syn"]["time_s"] for r in raw])) if "ants_syn" in methods else None
    syn_c = float(np.mean([r["ants_syn"]["cpu_s"] for r in raw])) if "ants_syn" in methods else None
    for m in methods:
        rows = [r[m] for r in raw]
        t = float(np.mean([r["time_s"] for r in rows]))
        c = float(np.mean([r.get("cpu_s", 0.0) for r in rows]))
        per_pair.append({
            "task": f"(a) T1 brain, {len(raw)} simulated warps", "method": names[m],
            "Dice (30 structures)": float(np.mean([r["dice"] for r in rows])),
            "Dice min pair": float(np.min([r["dice"] for r in rows])),
            **({"HD95 mm": float(np.nanmean([r["hd95"] for r in rows]))} if args.hd95 else {}),
            "folding %": float(np.mean([r["folding_percent"] for r in rows])),
            "time s/pair": t if m != "none" else None,
            "SyN time / time": (syn_t / t) if (syn_t and m != "none") else None,
            "CPU s/pair": c if m != "none" else None,
            "SyN CPU / CPU": (syn_c / c) if (syn_c and m != "none") else None,
        })
    return per_pair, {"pairs": raw}


def _task_b(args: argparse.Namespace, py: Path | None, data: Path) -> tuple[list[dict], dict]:
    from radfm.io import load_volume
    from radfm.tasks.registration.api import load_model, register
    from radfm.tasks.registration.functional import identity_grid, resample

    fixed = load_volume(data / "registration/ants/mni.nii.gz", modality="MR")
    moving = load_volume(data / "registration/ants/ch2.nii.gz", modality="MR")
    mask = fixed.array > np.percentile(fixed.array, 60)
    # "before": the moving image placed on the fixed grid by world coordinates alone
    import torch

    vox = np.linalg.inv(moving.affine) @ fixed.affine
    m = np.eye(4)[[2, 1, 0, 3]] @ vox @ np.eye(4)[[2, 1, 0, 3]]
    shape_m = tuple(reversed(fixed.shape))
    coords = identity_grid(shape_m)
    coords = torch.einsum("ij,bjdhw->bidhw", torch.from_numpy(m[:3, :3]).float(), coords) + torch.from_numpy(
        m[:3, 3]).float().view(1, 3, 1, 1, 1)
    src = torch.from_numpy(np.ascontiguousarray(moving.array.transpose(2, 1, 0)))[None, None]
    before = resample(src, coords)[0, 0].numpy().transpose(2, 1, 0)
    rows, raw = [], {}
    raw["none"] = {**_similarity(before, fixed.array, mask), "folding_percent": 0.0}
    model = load_model(args.model)
    for steps in args.instance_steps:
        load = os.getloadavg()
        res, timing = _timed(lambda s=steps: register(fixed, moving, model=model, instance_steps=s), args.repeats)
        raw[_key(steps)] = {**_similarity(res.warped.array, fixed.array, mask),
                            "folding_percent": res.stats["folding_percent"], **timing, "load_average_at_start": load}
    if py is not None:
        load = os.getloadavg()
        ants = _run_ants(py, fixed, moving, None, args.threads)
        raw["ants_syn"] = {**_similarity(ants["warped"], fixed.array, mask),
                           "folding_percent": float(100.0 * np.count_nonzero(ants["jac"] <= 0) / ants["jac"].size),
                           "time_s": ants["register_s"], "cpu_s": ants["register_cpu_s"],
                           "load_average_at_start": load}
    names = {"none": "no registration (world coordinates)", **_names(args.instance_steps), "ants_syn": "ANTs SyN"}
    syn_t, syn_c = raw.get("ants_syn", {}).get("time_s"), raw.get("ants_syn", {}).get("cpu_s")
    for k, v in raw.items():
        t, c = v.get("time_s"), v.get("cpu_s")
        rows.append({"task": "(b) Colin27 -> MNI152", "method": names[k], "NCC": v["ncc"], "NMI": v["nmi"],
                     "folding %": v["folding_percent"], "time s/pair": t,
                     "SyN time / time": (syn_t / t) if (syn_t and t) else None,
                     "CPU s/pair": c, "SyN CPU / CPU": (syn_c / c) if (syn_c and c) else None})
    return rows, raw


# --------------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench registration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help=f"simulated warps of the T1 brain (default 3, max {len(FIELDS)})")
    p.add_argument("--threads", type=int, default=1, help="threads for torch AND ITK/ANTs (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="radfm runs per pair and row; the median time is reported (default 3; SyN runs once)")
    p.add_argument("--model", default=None, help="registration model directory (default: the shipped model)")
    p.add_argument("--instance-steps", type=lambda v: sorted({int(x) for x in v.split(",")}), default=[0, 5, 50],
                   help="comma-separated instance-optimisation step counts, one radfm row each "
                        "(default 0,5,50: the network alone, and the network + 5 or 50 steps)")
    p.add_argument("--no-ants", action="store_true", help="skip ANTs SyN")
    p.add_argument("--no-inter-subject", action="store_true", help="skip task (b)")
    p.add_argument("--no-hd95", dest="hd95", action="store_false", help="skip HD95 (slow on 30 structures)")
    p.add_argument("--bench-python", default=None, help="python with antspyx (default: .venv-bench/bin/python)")
    add_output_args(p)
    return p


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run tasks (a) and (b) for radfm and the baselines; print the table; write docs + JSON."""
    import SimpleITK as sitk
    import torch

    args = _parser().parse_args(list(argv or []))
    args.pairs = max(1, min(args.pairs, len(FIELDS)))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    data = _shared_data()
    py = None if args.no_ants else _bench_python(args.bench_python)
    if py is None and not args.no_ants:
        log.warning("ANTs not found: create .venv-bench (see pyproject's [bench] extra); running without SyN")
    elastix = hasattr(sitk, "ElastixImageFilter")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows, raw_a = _task_a(args, py, data)
    raw_b: dict[str, Any] = {}
    if not args.no_inter_subject:
        rows_b, raw_b = _task_b(args, py, data)
        rows += rows_b
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    import resource

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process: radfm only
    from radfm.eval.benchreport import markdown_table

    print(markdown_table(rows))
    goals = _goals(rows)
    print(json.dumps(goals, indent=2))
    results = {"task_a": raw_a, "task_b": raw_b, "goals": goals, "elastix": "available" if elastix else
               "not available (this SimpleITK build has no ElastixImageFilter)", "seconds": seconds,
               "load_average_before": load_before, "load_average_after": load_after, "threads": args.threads,
               "radfm_process_peak_rss_mib": peak_rss_mib,
               "fields": FIELDS[: args.pairs]}
    if not args.no_write:
        command = "radfm bench registration " + shlex.join(list(argv or []))
        write_section(args.out or default_md_path(), NAME, title=TITLE, command=command, table=rows,
                      notes=_notes(args, goals, elastix, seconds, load_before, load_after, peak_rss_mib)
                      + _load_note(raw_a, raw_b),
                      json_path=args.json_path,
                      results=results, machine=machine_info())
    return results


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals on task (a), for every radfm row (keyed by its method name)."""
    a = [r for r in rows if r["task"].startswith("(a)")]
    syn = next((r for r in a if r["method"] == "ANTs SyN"), None)
    out: dict[str, Any] = {}
    for ours in (r for r in a if r["method"].startswith("radfm")):
        g: dict[str, Any] = {"folding <= 0.1 %": ours["folding %"] <= 0.1}
        if syn is not None:
            g["Dice >= SyN"] = ours["Dice (30 structures)"] >= syn["Dice (30 structures)"]
            g["time <= SyN / 20"] = ours["time s/pair"] <= syn["time s/pair"] / 20
            g["Dice gap to SyN"] = ours["Dice (30 structures)"] - syn["Dice (30 structures)"]
            g["speed-up vs SyN"] = syn["time s/pair"] / ours["time s/pair"]
        out[ours["method"]] = g
    return out


def _load_note(raw_a: dict[str, Any], raw_b: dict[str, Any]) -> str:
    """Mean 1-minute load average (``os.getloadavg()``) when each method started its pairs."""
    loads: dict[str, list[float]] = {}
    for rec in [*raw_a.get("pairs", []), raw_b]:
        for m in sorted(k for k in rec if k.startswith(("radfm", "ants_syn"))):
            if isinstance(rec.get(m), dict) and "load_average_at_start" in rec[m]:
                loads.setdefault(m, []).append(rec[m]["load_average_at_start"][0])
    if not loads:
        return ""
    parts = ", ".join(f"{m} {np.mean(v):.2f} (min {min(v):.2f}, max {max(v):.2f}, {len(v)} runs)" for m, v in loads.items())
    return f"\nMachine load: 1-minute load average (`os.getloadavg()`) when each method started a pair: {parts}."


def _notes(args: argparse.Namespace, goals: dict[str, Any], elastix: bool, seconds: float,
           load_before: tuple[float, ...], load_after: tuple[float, ...], peak_rss_mib: float) -> str:
    fields = ", ".join(f"seed {s}: max {m:g} mm, smoothness {sm:g} mm" for s, m, sm in FIELDS[: args.pairs])
    met = " ".join(f"**{m}**: " + "; ".join(f"{k}: {'met' if v is True else 'NOT met' if v is False else f'{v:.3g}'}"
                                            for k, v in g.items()) + "." for m, g in goals.items())
    return f"""Task (a) uses a real T1 brain but SIMULATED deformations: the scan and its FreeSurfer labels are warped
by smooth random fields ({fields}; `random_smooth_field`, never used in training) and registered back.
Task (b) is a real inter-subject pair without labels (similarity in the fixed head mask, NCC = Pearson,
NMI = (H(a)+H(b))/H(a,b)). radfm runs the shipped model (trained only on simulated pairs: phantoms and the
MNI 2009a T1 warped by random fields; the MNI 2009a template is a relative of `mni.nii.gz` in (b)) on a
2 mm grid with bf16 autocast, the field upsampled trilinearly to 1 mm (peak memory of the benchmark process,
which holds the data and radfm but not ANTs: {peak_rss_mib:.0f} MiB); instance-optimisation steps per radfm row: {", ".join(map(str, args.instance_steps))} (Adam on the 2 mm grid,
local NCC + diffusion; `register(..., instance_steps=N)`, CLI `--instance-steps N`).
Both methods use {args.threads} thread(s) (torch; ITK via ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS). ANTs SyN is
antspyx 0.6.3 `type_of_transform="SyN"` in `.venv-bench` (subprocess; its time = registration + label
warping, start-up excluded; it runs once per pair, which itself spans minutes of load). radfm times are the
median of {args.repeats} runs per pair (one run lasts seconds, so a short load spike would otherwise dominate).
"time" is wall-clock; "CPU" is user + system CPU seconds of the registering process (radfm: this process
during `register()`; SyN: its subprocess during registration + label warping), the figure least affected by
the other jobs on the machine. The issue's time goal is judged on wall time. Elastix: {"available" if elastix else "not available (SimpleITK without ElastixImageFilter)"}.
2D pairs (c) are not run: radfm registration is 3D only. Size of the run: {args.pairs} of the {len(FIELDS)} prepared
fields (`--pairs`) and one inter-subject pair, chosen to keep the whole run (SyN ≈ 1.5 min per pair at one
thread on this loaded machine, radfm 3 runs per row) under 30 minutes; more pairs give tighter means. Goals (issue): {met}
The machine is shared: load average {load_before[0]:.1f} before and {load_after[0]:.1f} after the run
({seconds / 60:.1f} min in all); timings of both methods suffer alike, ratios are the comparable figure."""
