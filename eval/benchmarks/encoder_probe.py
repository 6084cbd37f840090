"""``radfm bench encoder-probe``: does the shared encoder carry image content? A frozen-feature linear probe.

Method. Held-out real volumes never used for training (the FreeSurfer-labelled T1 brain of
VoxelMorph, the TotalSegmentator example CT) are prepared with one plan for every feature set
(2 mm; ``--normalization auto``, the shipped encoder's: CT through the soft-tissue map, MR
percentile; or ``percentile`` for both). Each encoder runs frozen on the whole volume; every stage map is
upsampled (trilinear) to the input grid and concatenated, giving one feature vector per voxel. A
linear softmax probe (standardised features, L2 weight decay, full-batch L-BFGS) is fitted on
voxels of one half of the volume (z below the middle) and scored on the other half: macro Dice
(F1) over the classes on the test voxels, background included. The same probe runs on

- **raw intensity** (1 feature) and **intensity + smoothed intensities** (σ = 1, 2, 4 voxels and
  the gradient magnitude: a fair hand-crafted baseline),
- a **random-init** encoder of the same architecture,
- each encoder folder given with ``--encoder NAME=DIR``.

Classes: brain — cerebral white matter, cortex, lateral ventricles, cerebellum, deep grey nuclei,
brain stem, background; CT — liver, spleen, kidneys, stomach, lungs, vertebrae/ribs, other body,
air. Reconstruction (the pretraining objective) is reported from a pretraining run's
``metrics.jsonl`` when ``--pretrain-run DIR`` is given (held-out masked loss vs the flat-patch
yardstick).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from radfm.data.shared import shared_data_root
from radfm.eval.benchreport import (
    add_output_args,
    default_md_path,
    machine_info,
    parse_with_threads,
    write_section,
)
from radfm.io import load_volume
from radfm.io.volume import Volume
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan, apply_plan

NAME = "encoder-probe"
TITLE = "Encoder: frozen-feature linear probe on held-out real volumes (and pretraining reconstruction)"

BRAIN_CLASSES = {"white matter": (2, 41), "cortex": (3, 42), "lateral ventricles": (4, 43),
                 "cerebellum": (7, 8, 46, 47), "deep grey nuclei": (10, 11, 12, 13, 17, 18, 49, 50, 51, 52, 53, 54),
                 "brain stem": (16,)}
CT_CLASSES = {"liver": (5,), "spleen": (1,), "kidneys": (2, 3), "stomach": (6,), "lungs": (10, 11, 12, 13, 14),
              "bone": tuple(range(25, 51)) + tuple(range(92, 117))}


def _class_map(labels: np.ndarray, classes: dict[str, tuple[int, ...]], body: np.ndarray | None) -> np.ndarray:
    out = np.zeros(labels.shape, np.int64)
    k = 1
    if body is not None:
        out[body] = k
        k += 1
    for ids in classes.values():
        out[np.isin(labels, ids)] = k
        k += 1
    return out


def load_probe_volumes(root: Path) -> list[tuple[str, Volume, np.ndarray, list[str]]]:
    """``(name, volume, canonical class map, class names)`` of the held-out probe volumes."""
    out = []
    npz = np.load(root / "seg3d/voxelmorph_brain/test_scan_uint8.npz")
    brain = Volume(array=npz["vol"].astype(np.float32) / 255.0, affine=np.eye(4), modality="MR")
    out.append(("T1 brain (FreeSurfer)", brain, _class_map(npz["seg"], BRAIN_CLASSES, None),
                ["background", *BRAIN_CLASSES]))
    ts = root / "seg3d/totalsegmentator"
    ct = load_volume(ts / "example_ct_sm.nii.gz", modality="CT")
    seg = np.rint(load_volume(ts / "example_seg.nii.gz").array).astype(np.int64)
    body = ct.array > -500
    out.append(("CT abdomen (TotalSegmentator)", ct, _class_map(seg, CT_CLASSES, body),
                ["air", "other body", *CT_CLASSES]))
    return out


def _labels_on_grid(classes: np.ndarray, prepared: Any) -> np.ndarray:
    from radfm.data.patches import canonical_to_model

    t = torch.from_numpy(canonical_to_model(classes.astype(np.int16))).float()[None, None]
    return F.interpolate(t, size=prepared.resampled_shape, mode="nearest-exact")[0, 0].long().numpy()


@torch.no_grad()
def encoder_features(encoder: RadFMEncoder, x: torch.Tensor, modality: int, size: tuple[int, ...]) -> np.ndarray:
    """``(D·H·W, F)`` float32: every stage map upsampled to the input grid and concatenated."""
    mod = torch.tensor([modality]) if encoder.modality_embed is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x[None], modality_ids=mod)
    maps = out.feature_maps if out.feature_maps is not None else out.feature_pyramid
    ups = [F.interpolate(m.float(), size=tuple(x.shape[1:]), mode="trilinear", align_corners=False)[0] for m in maps]
    feats = torch.cat(ups, 0)[:, : size[0], : size[1], : size[2]]
    return feats.reshape(feats.shape[0], -1).T.contiguous().numpy()


def intensity_features(x: np.ndarray, *, smoothed: bool) -> np.ndarray:
    if not smoothed:
        return x.reshape(-1, 1)
    chans = [x] + [ndimage.gaussian_filter(x, s) for s in (1, 2, 4)]
    chans.append(np.sqrt(sum(g**2 for g in np.gradient(ndimage.gaussian_filter(x, 1)))))
    return np.stack([c.reshape(-1) for c in chans], 1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 n_classes: int, *, weight_decay: float = 1e-4) -> float:
    """Macro Dice (F1) of a softmax linear probe fitted with L-BFGS on standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xa = torch.from_numpy((train_x - mu) / sd).float()
    xb = torch.from_numpy((test_x - mu) / sd).float()
    ya = torch.from_numpy(train_y).long()
    lin = torch.nn.Linear(xa.shape[1], n_classes)
    counts = torch.bincount(ya, minlength=n_classes).float()
    weights = (counts.sum() / counts.clamp_min(1.0)) / n_classes  # balanced: small organs count
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(xa), ya, weight=weights) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = lin(xb).argmax(1).numpy()
    scores = []
    for c in range(n_classes):
        tp = int(((pred == c) & (test_y == c)).sum())
        denom = int((pred == c).sum() + (test_y == c).sum())
        if (test_y == c).any():
            scores.append(2 * tp / max(denom, 1))
    return float(np.mean(scores))


def _sample(labels: np.ndarray, sel: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` voxel indices inside ``sel``, stratified so each class gets its share."""
    flat, lab = np.flatnonzero(sel.ravel()), labels.ravel()
    out = []
    classes = np.unique(lab[flat])
    for c in classes:
        idx = flat[lab[flat] == c]
        out.append(rng.choice(idx, size=min(len(idx), n // len(classes)), replace=False))
    return np.concatenate(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench encoder-probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="../shared/data")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR", help="encoder folder(s) to probe")
    p.add_argument("--random-preset", default="cnn-small", help="architecture of the random-init control")
    p.add_argument("--pretrain-run", type=Path, default=None, help="a `radfm pretrain` output dir (metrics.jsonl)")
    p.add_argument("--voxels", type=int, default=12000, help="probe voxels per half")
    p.add_argument("--normalization", choices=("auto", "percentile"), default="auto",
                   help="intensity map for every feature set (auto: the shipped encoder's training map)")
    add_output_args(p)
    return p


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_with_threads(_parser(), argv)
    root = shared_data_root(str(args.data) if args.data else None)
    if root is None or not root.is_dir():
        raise SystemExit("../shared/data not found: pass --data DIR")
    plan = PreprocessPlan(target_spacing=(2.0, 2.0, 2.0), normalization=args.normalization, pad_multiple=(16, 16, 16))
    torch.manual_seed(0)
    encoders: dict[str, RadFMEncoder] = {"random init": RadFMEncoder(RadFMEncoderConfig.from_preset(args.random_preset)).eval()}
    for spec in args.encoder:
        name, _, path = spec.partition("=")
        encoders[name] = RadFMEncoder.from_pretrained(path, dtype=torch.float32).eval()
    rows, results = [], {}
    for vname, vol, classes, cnames in load_probe_volumes(root):
        prepared = apply_plan(vol, plan)
        lab = _labels_on_grid(classes, prepared)
        size = prepared.resampled_shape
        x = prepared.tensor
        img = x[0, : size[0], : size[1], : size[2]].numpy()
        rng = np.random.default_rng(0)
        zz = np.indices(lab.shape)[0]
        half = lab.shape[0] // 2
        tr = _sample(lab, zz < half, args.voxels, rng)
        te = _sample(lab, zz >= half, args.voxels, rng)
        feats = {"raw intensity": intensity_features(img, smoothed=False),
                 "intensity + smoothed (hand-crafted)": intensity_features(img, smoothed=True)}
        modality = 0 if vol.modality == "CT" else 1
        for ename, enc in encoders.items():
            feats[ename] = encoder_features(enc, x, modality, size)
        y = lab.ravel()
        res = {name: linear_probe(f[tr], y[tr], f[te], y[te], len(cnames)) for name, f in feats.items()}
        results[vname] = res
        for name, score in res.items():
            rows.append({"volume": vname, "features": name, "dims": int(feats[name].shape[1]),
                         "macro Dice (test half)": score})
        print(vname, {k: round(v, 3) for k, v in res.items()}, flush=True)
    recon = None
    if args.pretrain_run is not None:
        lines = [json.loads(s) for s in (args.pretrain_run / "metrics.jsonl").read_text().splitlines() if s.strip()]
        evals = [r for r in lines if "eval_loss" in r]
        if evals:
            recon = {"first": evals[0], "last": evals[-1]}
    if not args.no_write:
        notes = [
            "Held-out real volumes only (never used for training or pretraining). Probe fitted on the lower half "
            "of each volume (z), scored on the upper half; macro Dice over classes present there. "
            f"Intensity map for every feature set: `{args.normalization}`.",
        ]
        if recon is not None:
            last = recon["last"]
            notes.append(
                f"Pretraining reconstruction (`{args.pretrain_run}`): held-out masked loss {last['eval_loss']:.3f} at "
                f"step {last['step']} (step 0: {recon['first']['eval_loss']:.3f}) vs the flat-patch yardstick "
                f"{last['eval_flat_baseline']:.3f} (predicting each hidden patch flat at its own mean; a "
                f"constant predictor of the global mean scores worse still).")
        write_section(args.out or default_md_path(), NAME, title=TITLE,
                      command=("radfm bench encoder-probe " + shlex.join(list(argv or []))).strip(),
                      table=rows, notes="\n\n".join(notes), json_path=args.json_path,
                      results={"probe": results, "reconstruction": recon}, machine=machine_info())
    return {"probe": results, "reconstruction": recon}
