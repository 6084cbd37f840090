"""Training with simulated interaction (SAM / SAM-Med3D), and the click protocol shared with evaluation.

Read top to bottom: the click simulator (used by training, the learning test and the benchmark, so
every method is clicked the same way), training cases (phantoms or any labelled folder), the loop.

One training step, per sample: a crop around a target object (each organ/lesion label is a target,
split into connected components), a first prompt (a random foreground click, an interior click or a
jittered box), the image embedding, then

1. round 0: decode with the three-candidate output; loss on the best of the three (SAM);
2. k extra rounds (k uniform in 0..max_rounds): a click from the error region of the current mask
   (a false-negative region → positive click, false-positive → negative, at the interior point of
   the largest error component by distance transform), the previous low-res mask fed back, the
   single-mask output. Rounds before the last run without gradient (they only build the state the
   last round starts from); the last one is trained.

Loss: Dice + focal (MONAI ``DiceFocalLoss``) of the trained mask(s) + MSE of the predicted IoU
against the actual IoU of every candidate. Deterministic with the seed (one ``np.random.Generator``
for sampling, ``torch.manual_seed`` for init and dropout).

Run as a module to rebuild the shipped model (see ``weights/MODEL_CARD.md``):
``python -m radfm.tasks.segmentation.train --out DIR --steps 1500``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from radfm.data.patches import canonical_to_model
from radfm.errors import InputError
from radfm.io.volume import Volume
from radfm.models.encoder_config import MODALITY_IDS
from radfm.preprocess.plan import PreprocessPlan, apply_plan
from radfm.tasks.segmentation.model import ImageEmbeddings, RadFMPromptSegmenter

__all__ = [
    "TrainCase",
    "TrainConfig",
    "evaluate_clicks",
    "interactive_session",
    "next_click",
    "phantom_cases",
    "prepare_case",
    "train",
]

log = logging.getLogger(__name__)

#: Phantom labels that are not a sensible click target (the whole body, the background).
EXCLUDED_TARGETS = ("background", "body")


# ----------------------------------------------------------------------------- click simulation
def next_click(pred: np.ndarray, gt: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               rng: np.random.Generator | None = None, top_fraction: float = 0.0) -> tuple[np.ndarray, int] | None:
    """The next corrective click for a mask ``pred`` of object ``gt`` (both bool, same 3D shape).

    The error voxels (false negatives ∪ false positives) are split into connected components; the
    largest component is the one to fix, and the click goes to its most interior voxel (largest
    distance, in mm, to the component's border). Label 1 when the component is missed object
    (false negative), 0 when it is leakage (false positive). With ``rng`` and ``top_fraction`` > 0
    the click is drawn among voxels within that fraction of the maximum distance (training
    variety). Work is restricted to the bounding box of ``pred | gt``. Returns ``None`` when
    ``pred == gt``.
    """
    union = pred | gt
    if not union.any():
        return None
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, np.asarray(gt.shape))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, g = pred[sl], gt[sl]
    best: tuple[int, np.ndarray, int] | None = None
    for err, label in ((g & ~p, 1), (p & ~g, 0)):
        if not err.any():
            continue
        comps, _ = ndimage.label(err)
        sizes = np.bincount(comps.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), comps == k, label)
    if best is None:
        return None
    _, comp, label = best
    dist = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=tuple(float(s) for s in spacing))[1:-1, 1:-1, 1:-1]
    if rng is not None and top_fraction > 0:
        cand = np.argwhere(dist >= (1.0 - top_fraction) * dist.max())
        point = cand[int(rng.integers(len(cand)))]
    else:
        point = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.asarray(point) + lo, label


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Binary Dice (both empty → 1). Kept here so the task does not import ``radfm.eval``."""
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


PredictFn = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


def interactive_session(predict: PredictFn, gt: np.ndarray, n_clicks: int, *,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[list[float], list[Any]]:
    """Simulate ``n_clicks`` rounds of clicking on one object with any method.

    ``predict(points (N, 3) canonical voxel indices, labels (N,), state) -> (mask bool, state)`` is
    called after every click with all clicks so far (``state`` is the method's previous output,
    ``None`` at first). The first click is the interior point of the object (the error region of an
    empty mask), every next one comes from the current mask's errors (:func:`next_click`), so all
    methods follow the same protocol on their own mistakes. Returns the Dice after each click and
    the states.
    """
    pred = np.zeros(gt.shape, dtype=bool)
    points: list[np.ndarray] = []
    labels: list[int] = []
    dices: list[float] = []
    states: list[Any] = []
    state = None
    for _ in range(n_clicks):
        click = next_click(pred, gt, spacing=spacing)
        if click is None:  # perfect: the remaining rounds keep the score
            dices.append(dices[-1] if dices else 1.0)
            continue
        points.append(click[0])
        labels.append(click[1])
        pred, state = predict(np.array(points, float), np.array(labels), state)
        pred = np.asarray(pred, dtype=bool)
        dices.append(dice_score(pred, gt))
        states.append(state)
    return dices, states


# ----------------------------------------------------------------------------- training data
@dataclass
class TrainCase:
    """One case resampled to the model's grid.

    Attributes:
        image: ``(C, D, H, W)`` float32 normalised (the plan's output, padded to the patch multiple).
        labels: ``(D, H, W)`` int16 label map on the same grid (nearest-neighbour resampled).
        targets: label ids that may be prompted, with their names.
        modality_id: ``MODALITY_IDS`` value.
        spacing: voxel size (mm) of the grid along (D, H, W).
    """

    image: torch.Tensor
    labels: np.ndarray
    targets: dict[int, str]
    modality_id: int
    spacing: tuple[float, float, float]
    case_id: str = ""


def prepare_case(image: Volume, labels: Volume | np.ndarray, label_names: dict[int, str] | None,
                 plan: PreprocessPlan, *, case_id: str = "", min_voxels: int = 20) -> TrainCase:
    """Resample an image (``apply_plan``) and its label map (nearest, same grid) to the model grid."""
    prepared = apply_plan(image, plan)
    lab = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    lab = np.asarray(lab)
    if lab.shape[:3] != image.shape:
        raise InputError(f"case {case_id}: label grid {lab.shape} does not match image grid {image.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(lab.astype(np.int16)))).float()[None, None]
    t = F.interpolate(t, size=prepared.resampled_shape, mode="nearest-exact")[0, 0]
    pad = prepared.pad
    t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]))
    lab_m = t.numpy().astype(np.int16)
    counts = np.bincount(lab_m.ravel().clip(0), minlength=1)
    names = label_names or {int(v): f"label {int(v)}" for v in np.unique(lab_m) if v > 0}
    targets = {int(k): str(v) for k, v in names.items()
               if int(k) > 0 and str(v).lower() not in EXCLUDED_TARGETS and int(k) < len(counts)
               and counts[int(k)] >= min_voxels}
    return TrainCase(image=prepared.tensor, labels=lab_m, targets=targets,
                     modality_id=MODALITY_IDS.get(image.modality, MODALITY_IDS["other"]),
                     spacing=tuple(float(s) for s in prepared.spacing_dhw), case_id=case_id)  # type: ignore[arg-type]


def phantom_cases(n: int, plan: PreprocessPlan, *, seed: int = 0, size_scale: float = 1.0,
                  progress: bool = False) -> list[TrainCase]:
    """``n`` SIMULATED cases (CT and MR, torso and head, 0–3 lesions, varied slice thickness).

    ``size_scale`` shrinks the field of view's voxel count (tests use ~0.5 for speed); anatomy
    always fills the field of view (see ``radfm.data.phantom``).
    """
    from tqdm.auto import tqdm

    from radfm.data.phantom import make_phantom

    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(n), desc="phantoms", disable=not progress):
        head = rng.random() < 0.3
        modality = "MR" if rng.random() < 0.4 else "CT"
        fov = rng.uniform(180, 230) if head else rng.uniform(280, 380)
        sz = rng.uniform(3.0, 6.0) if rng.random() < 0.4 else rng.uniform(2.0, 3.5)
        sxy = rng.uniform(2.0, 3.5)
        shape = tuple(max(16, round(fov / s * size_scale)) for s in (sxy, sxy, sz))
        spacing = (sxy / size_scale, sxy / size_scale, sz / size_scale)
        case = make_phantom(int(rng.integers(2**31)), modality=modality, shape=shape, spacing=spacing,
                            body="head" if head else "chest_abdomen", n_lesions=int(rng.integers(0, 4)))
        out.append(prepare_case(case.image, case.labels, case.label_names, plan, case_id=f"phantom{i}"))
    return out


def folder_cases(path: str | Path, plan: PreprocessPlan, *, limit: int | None = None) -> list[TrainCase]:
    """Cases of any labelled folder/manifest ``radfm.data.load_cases`` understands (every label a target)."""
    from radfm.data.datasets import load_case, load_cases

    ds = load_cases(path)
    desc = json.loads(ds.info.description or "{}")
    names = desc.get("labels") or {}
    names = {int(v): str(k) for k, v in names.items()} if names and all(
        str(v).isdigit() for v in names.values()) else {int(k): str(v) for k, v in names.items() if str(k).isdigit()}
    out = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        if not row.get("label"):
            continue
        case = load_case(row)
        out.append(prepare_case(case["image"], case["label"], names or None, plan, case_id=str(case["case_id"])))
    return out


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Training settings (all sizes in model voxels at the plan's spacing).

    Attributes:
        steps, batch_size, lr, weight_decay, warmup: optimisation (AdamW, cosine decay after warm-up).
        crop_sizes: candidate crop sizes ``(D, H, W)``, one drawn per step (the window varies at inference).
        max_rounds: extra corrective-click rounds per sample (uniform 0..max_rounds).
        box_prob: probability that the first prompt is a jittered box instead of a click.
        interior_prob: probability that the first click is an interior point (else uniform foreground).
        class_prompt_prob: probability of also giving the class name (when the model knows it).
        lora: LoRA on the encoder (``None``: when the encoder is pretrained, i.e. ``freeze_encoder``
            is not False and the encoder came from a checkpoint); else the encoder trains in full.
        lora_r: LoRA rank.
        seed: the only source of randomness.
        iou_loss_weight: weight of the IoU-prediction MSE.
        augment: random flips and intensity scale/shift/gamma of the crop.
        threads: torch threads (``None``: leave as is).
    """

    steps: int = 1000
    batch_size: int = 2
    crop_sizes: Sequence[Sequence[int]] = ((48, 48, 48), (48, 48, 48), (64, 64, 64))
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    max_rounds: int = 4
    box_prob: float = 0.25
    interior_prob: float = 0.5
    class_prompt_prob: float = 0.2
    lora: bool | None = None
    lora_r: int = 8
    seed: int = 0
    iou_loss_weight: float = 1.0
    augment: bool = True
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _crop(case: TrainCase, size: Sequence[int], rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, int]:
    """A crop around a random target object: ``(image (C, d, h, w), target bool (d, h, w), label id)``."""
    label = int(rng.choice(list(case.targets)))
    vox = np.argwhere(case.labels == label)
    centre = vox[int(rng.integers(len(vox)))]
    shape = np.asarray(case.labels.shape)
    size = np.asarray(size)
    jitter = (rng.uniform(-0.3, 0.3, 3) * size).astype(int)
    start = np.clip(centre + jitter - size // 2, 0, np.maximum(shape - size, 0))
    sl = tuple(slice(int(s), int(s + z)) for s, z in zip(start, size))
    img = case.image[(slice(None), *sl)]
    lab = case.labels[sl] == label
    if tuple(img.shape[1:]) != tuple(size):  # smaller than the crop: pad (replicate keeps "air" air)
        pad = [int(z - n) for z, n in zip(size, img.shape[1:])]
        img = F.pad(img[None], (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")[0]
        lab = np.pad(lab, [(0, p) for p in pad])
    # The object = the connected component of the label under a voxel of it (a click means one object).
    comps, n = ndimage.label(lab)
    if n > 1:
        keep = int(comps[tuple(int(v) for v in centre - start)])  # the sampled voxel is inside the crop
        lab = comps == (keep or int(np.argmax(np.bincount(comps.ravel())[1:])) + 1)
    return img, lab, label


def _augment(img: torch.Tensor, lab: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    for ax in range(3):
        if rng.random() < 0.5:
            img = img.flip(ax + 1)
            lab = np.flip(lab, ax)
    a, b = rng.uniform(0.8, 1.2), rng.uniform(-0.15, 0.15)
    img = img * a + b
    if rng.random() < 0.3:  # gamma on [-1, 1] mapped to [0, 1]
        g = rng.uniform(0.7, 1.5)
        img = ((img.clamp(-1, 1) + 1) / 2) ** g * 2 - 1
    if rng.random() < 0.3:
        img = img + torch.from_numpy(rng.normal(0, rng.uniform(0.01, 0.06), img.shape).astype(np.float32))
    return img.contiguous(), np.ascontiguousarray(lab)


def _first_prompt(target: np.ndarray, rng: np.random.Generator, cfg: TrainConfig) -> dict[str, Any]:
    """Round-0 prompt in crop voxels: a click (interior or uniform) or a jittered box."""
    if rng.random() < cfg.box_prob:
        idx = np.argwhere(target)
        lo, hi = idx.min(0).astype(float), idx.max(0).astype(float)
        ext = hi - lo + 1
        lo = lo + rng.uniform(-0.1, 0.1, 3) * ext + rng.uniform(-2, 2, 3)
        hi = hi + rng.uniform(-0.1, 0.1, 3) * ext + rng.uniform(-2, 2, 3)
        n = np.asarray(target.shape, float) - 1
        lo, hi = np.clip(np.minimum(lo, hi), 0, n), np.clip(np.maximum(lo, hi), 0, n)
        return {"points": [], "labels": [], "box": np.concatenate([lo, hi])}
    if rng.random() < cfg.interior_prob:
        click = next_click(np.zeros_like(target), target, rng=rng, top_fraction=0.3)
        assert click is not None
        p = click[0]
    else:
        idx = np.argwhere(target)
        p = idx[int(rng.integers(len(idx)))]
    return {"points": [np.asarray(p, float)], "labels": [1], "box": None}


def _decode(model: RadFMPromptSegmenter, emb: Any, b: int, prompt: dict[str, Any], mask_in: torch.Tensor | None,
            class_id: int, multimask: bool) -> Any:
    """Decode sample ``b`` of a batched embedding with its own prompts."""
    one = ImageEmbeddings(embeddings=emb.embeddings[b:b + 1], skips=tuple(s[b:b + 1] for s in emb.skips),
                          grid_size=emb.grid_size, input_size=emb.input_size)
    kw: dict[str, Any] = {}
    if prompt["points"]:
        kw["point_coords"] = torch.tensor(np.array(prompt["points"])[None], dtype=torch.float32)
        kw["point_labels"] = torch.tensor(np.array(prompt["labels"])[None])
    if prompt["box"] is not None:
        kw["boxes"] = torch.tensor(prompt["box"][None], dtype=torch.float32)
    if class_id >= 0:
        kw["class_ids"] = torch.tensor([class_id])
    return model.decode(one, mask_inputs=mask_in, multimask_output=multimask, **kw)


def _losses(out: Any, target: torch.Tensor, loss_fn: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Best-of-M mask loss + IoU MSE for one sample; returns (mask loss, iou loss, best index)."""
    masks = out.masks[0].float()  # (M, d, h, w)
    m = masks.shape[0]
    per = loss_fn(masks[:, None], target[None, None].expand(m, 1, *target.shape)).flatten(1).mean(1)
    with torch.no_grad():
        hard = masks > 0
        inter = (hard & target[None].bool()).flatten(1).sum(1).float()
        union = (hard | target[None].bool()).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    best = int(per.argmin())
    return per[best], F.mse_loss(out.iou_predictions[0].float(), iou), best


def train(model: RadFMPromptSegmenter, cases: Sequence[TrainCase], cfg: TrainConfig, *,
          progress: bool = True, log_every: int = 50) -> dict[str, Any]:
    """Train ``model`` in place (or its LoRA-wrapped encoder + head) with simulated interaction.

    Returns ``{"loss": [...], "seconds": s, "trainable": n, "lora": bool, "model": trained model}``;
    with LoRA, ``result["peft_model"]`` is the wrapped model (save its adapter with
    ``radfm.adapters.lora.save_encoder_adapter``) and ``result["model"]`` the same base model.
    """
    from monai.losses import DiceFocalLoss
    from tqdm.auto import tqdm

    if not cases or not any(c.targets for c in cases):
        raise InputError("no training case has a label to prompt.", "Give cases with labelled structures.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    cases = [c for c in cases if c.targets]
    use_lora = bool(cfg.lora)
    peft_model = None
    if use_lora:
        from radfm.adapters.lora import LoraSpec
        from radfm.tasks.segmentation.model import attach_seg_lora

        peft_model = attach_seg_lora(model, LoraSpec(r=cfg.lora_r, alpha=2.0 * cfg.lora_r))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = DiceFocalLoss(sigmoid=True, reduction="none")
    class_lookup = {c.lower(): i for i, c in enumerate(model.config.class_names)}
    history: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train promptseg", disable=not progress)
    for step in bar:
        size = tuple(cfg.crop_sizes[int(rng.integers(len(cfg.crop_sizes)))])
        imgs, tgts, names, mods = [], [], [], []
        for _ in range(cfg.batch_size):
            case = cases[int(rng.integers(len(cases)))]
            img, tgt, label = _crop(case, size, rng)
            if cfg.augment:
                img, tgt = _augment(img, tgt, rng)
            imgs.append(img)
            tgts.append(tgt)
            names.append(case.targets[label])
            mods.append(case.modality_id)
        x = torch.stack(imgs)
        modality = torch.tensor(mods) if model.encoder.modality_embed is not None else None
        emb = model.get_image_embeddings(x, modality)
        total = torch.zeros(())
        for b in range(cfg.batch_size):
            target_np = tgts[b]
            target = torch.from_numpy(target_np.astype(np.float32))
            prompt = _first_prompt(target_np, rng, cfg)
            cid = class_lookup.get(names[b].lower(), -1) if rng.random() < cfg.class_prompt_prob else -1
            out = _decode(model, emb, b, prompt, None, cid, multimask=prompt["box"] is None)
            mask_loss, iou_loss, best = _losses(out, target, loss_fn)
            total = total + mask_loss + cfg.iou_loss_weight * iou_loss
            n_extra = int(rng.integers(0, cfg.max_rounds + 1))
            low = out.low_res_logits[:, best:best + 1].detach()
            pred = (out.masks[0, best] > 0).detach().numpy()
            for r in range(n_extra):
                click = next_click(pred, target_np, rng=rng, top_fraction=0.2)
                if click is None:
                    break
                prompt["points"].append(click[0].astype(float))
                prompt["labels"].append(click[1])
                last = r == n_extra - 1
                with torch.set_grad_enabled(last):
                    out = _decode(model, emb, b, prompt, low, cid, multimask=False)
                if last:
                    mask_loss, iou_loss, _ = _losses(out, target, loss_fn)
                    total = total + mask_loss + cfg.iou_loss_weight * iou_loss
                low = out.low_res_logits.detach()
                pred = (out.masks[0, 0] > 0).detach().numpy()
        loss = total / cfg.batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}")
        if log_every and (step + 1) % log_every == 0:
            log.info("step %d loss %.4f (%.1f s)", step + 1, np.mean(history[-log_every:]), time.perf_counter() - t0)
    model.eval()
    return {"loss": history, "seconds": time.perf_counter() - t0, "trainable": sum(p.numel() for p in params),
            "lora": use_lora, "model": model, "peft_model": peft_model}


# ----------------------------------------------------------------------------- evaluation on model-grid cases
@torch.inference_mode()
def evaluate_clicks(model: RadFMPromptSegmenter, cases: Sequence[TrainCase], *, n_clicks: int = 3,
                    per_case: int = 3, crop: Sequence[int] = (64, 64, 64), seed: int = 1,
                    ) -> dict[str, Any]:
    """Dice after 1..n_clicks simulated clicks on crops of held-out cases (model grid, no resampling).

    Returns ``{"dice", "iou_pred", "stability"}``: ``(n_objects, n_clicks)`` arrays of Dice and predicted
    IoU, and ``(n_objects, n_clicks, len(STABILITY_OFFSETS))`` stability scores.
    The first click is the object's interior point, later ones follow :func:`next_click`; round 1
    uses the best of the candidates by predicted IoU, later rounds the single-mask output with the
    previous low-res mask, as the predictor does.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    from radfm.tasks.segmentation.calibration import STABILITY_OFFSETS, stability_score

    dices, preds, stabs = [], [], []
    for case in cases:
        if not case.targets:
            continue
        for _ in range(per_case):
            img, tgt, _ = _crop(case, crop, rng)
            modality = torch.tensor([case.modality_id]) if model.encoder.modality_embed is not None else None
            emb = model.get_image_embeddings(img[None], modality)
            state: dict[str, Any] = {"low": None}
            ious: list[float] = []
            st: list[list[float]] = []

            def predict(points: np.ndarray, labels: np.ndarray, _state: Any, emb: Any = emb,
                        state: dict[str, Any] = state, ious: list[float] = ious, st: list[list[float]] = st,
                        ) -> tuple[np.ndarray, Any]:
                prompt = {"points": list(points), "labels": list(labels), "box": None}
                multi = len(points) == 1
                out = _decode(model, emb, 0, prompt, state["low"], -1, multimask=multi)
                best = int(out.iou_predictions[0].argmax()) if multi else 0
                state["low"] = out.low_res_logits[:, best:best + 1]
                ious.append(float(out.iou_predictions[0, best]))
                st.append([stability_score(out.masks[0, best], o) for o in STABILITY_OFFSETS])
                return (out.masks[0, best] > 0).numpy(), None

            d, _ = interactive_session(predict, tgt, n_clicks, spacing=case.spacing)
            d = d + [d[-1]] * (n_clicks - len(d)) if d else [0.0] * n_clicks
            ious = ious + [ious[-1] if ious else 0.0] * (n_clicks - len(ious))
            st = st + [st[-1] if st else [0.0] * len(STABILITY_OFFSETS)] * (n_clicks - len(st))
            dices.append(d)
            preds.append(ious)
            stabs.append(st)
    return {"dice": np.array(dices), "iou_pred": np.array(preds), "stability": np.array(stabs)}


# ----------------------------------------------------------------------------- building the shipped model
def default_plan() -> PreprocessPlan:
    """The shipped model's input recipe: 3 mm isotropic, percentile normalisation (CT and MR).

    Why 3 mm: a 64³ window then covers 192 mm (a liver, a lung, a brain hemisphere) and training
    fits a 2-core CPU; the cost is coarse borders on structures a few millimetres thin.
    """
    return PreprocessPlan(modality="any", target_spacing=(3.0, 3.0, 3.0), normalization="percentile",
                          patch_size=(64, 64, 64), pad_multiple=(8, 8, 8),
                          notes={"task": "prompt segmentation", "why": "one recipe for CT and MR"})


def build_model(encoder: Any = None, *, encoder_source: str = "included", class_names: Sequence[str] = (),
                window: Sequence[int] = (64, 64, 64), **config: Any) -> RadFMPromptSegmenter:
    """A new segmenter around ``encoder`` (default: a random-init tiny encoder with 8³ patches)."""
    from radfm.models.encoder import RadFMEncoder
    from radfm.models.encoder_config import RadFMEncoderConfig

    if encoder is None:
        encoder = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", patch_size=(8, 8, 8)))
    return RadFMPromptSegmenter.from_encoder(encoder, encoder_source=encoder_source, class_names=list(class_names),
                                             window_size=list(window), **config)


def main(argv: Sequence[str] | None = None) -> int:
    """Train (and save) a prompt segmenter on phantoms (+ optional labelled folders)."""
    from radfm.adapters.lora import save_encoder_adapter
    from radfm.data.phantom import HEAD_LABELS, TORSO_LABELS
    from radfm.tasks.segmentation.model import SEG_TASK

    p = argparse.ArgumentParser(prog="python -m radfm.tasks.segmentation.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--phantoms", type=int, default=40)
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--folder", action="append", default=[], help="labelled folder/manifest (load_cases)")
    p.add_argument("--encoder", default=None, help="'starter', a RadFMEncoder folder, or none (random tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    plan = default_plan()
    encoder, source, lora = None, "included", False
    if args.encoder:
        from radfm.models.encoder import RadFMEncoder

        if args.encoder == "starter":
            from radfm.starter import starter_encoder_path  # type: ignore[attr-defined]

            encoder, source = RadFMEncoder.from_pretrained(starter_encoder_path()), "starter"
        else:
            encoder = RadFMEncoder.from_pretrained(args.encoder)
        lora = True
        patch = tuple(encoder.config.patch_size)
        plan.pad_multiple = patch
    names = sorted({n for n in [*TORSO_LABELS.values(), *HEAD_LABELS.values()] if n not in EXCLUDED_TARGETS})
    torch.manual_seed(args.seed)
    model = build_model(encoder, encoder_source=source, class_names=names)
    model.preprocess_plan = plan
    cases = phantom_cases(args.phantoms, plan, seed=args.seed, progress=True)
    for folder in args.folder:
        cases += folder_cases(folder, plan)
    held = phantom_cases(args.held_out, plan, seed=args.seed + 10_000, progress=True)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed, lora=lora,
                      threads=args.threads)
    result = train(model, cases, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    if result["peft_model"] is not None:
        save_encoder_adapter(result["peft_model"], args.out / "adapter", task=SEG_TASK, base_encoder=source)
        # The head is saved in model.safetensors, LoRA factors apart: unwrap without merging.
        model = result["peft_model"].unload()
    model.preprocess_plan = plan
    model.save_pretrained(args.out)
    summary = calibrate_saved(args.out, held)
    summary.update({"train": dict(asdict(cfg).items()), "seconds": result["seconds"], "phantoms": args.phantoms,
                    "trainable_parameters": result["trainable"], "lora": result["lora"], "encoder": source,
                    "final_loss": float(np.mean(result["loss"][-50:])), "command": " ".join(sys.argv)})
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info("held-out Dice by clicks: %s", summary["held_out_dice_by_clicks"])
    return 0


def calibrate_saved(model_dir: Path, held: Sequence[TrainCase], *, n_clicks: int = 5, per_case: int = 4) -> dict[str, Any]:
    """Reload a saved model as users get it (adapter merged), measure held-out Dice by clicks and fit
    the quality → Dice calibration (``calibration.json``) on its first-click scores, keeping the
    quality signal (predicted IoU, stability, product) that ranks held-out Dice best."""
    from radfm.tasks.segmentation.calibration import (
        QUALITY_SIGNALS,
        STABILITY_OFFSETS,
        fit_best_calibration,
        quality_signal,
        signal_offset,
    )
    from radfm.tasks.segmentation.predictor import CALIBRATION_FILENAME, load_segmenter

    model = load_segmenter(model_dir)
    ev = evaluate_clicks(model, held, n_clicks=n_clicks, per_case=per_case)
    def stab(kind: str) -> np.ndarray:
        o = signal_offset(kind)
        return ev["stability"][:, 0, STABILITY_OFFSETS.index(o)] if o is not None else ev["iou_pred"][:, 0]

    signals = {k: quality_signal(k, ev["iou_pred"][:, 0], stab(k)) for k in QUALITY_SIGNALS}
    calib = fit_best_calibration(signals, ev["dice"][:, 0],
                                 note=f"{len(ev['dice'])} held-out SIMULATED phantom objects, first click")
    calib.save(Path(model_dir) / CALIBRATION_FILENAME)
    return {"held_out_dice_by_clicks": ev["dice"].mean(0).round(4).tolist(), "n_held_out_objects": len(ev["dice"]),
            "calibration": calib.stats}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
