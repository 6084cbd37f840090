"""One training sample: a crop, a target object in it and the first prompt (see ``train``'s module doc).

Four kinds of object (``TrainConfig.mix``): ``real`` labels, ``pseudo`` regions on real volumes,
``shape`` inserted into any background (a SIMULATED textured one when there is no volume), and
``phantom`` labels. Class prompts ask for every voxel of a named structure in the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage

from radfm.errors import InputError
from radfm.tasks.segmentation.cases import TrainCase
from radfm.tasks.segmentation.interaction import next_click

if TYPE_CHECKING:
    from radfm.tasks.segmentation.train import TrainConfig

__all__ = ["Pools", "Sample", "first_prompt", "flip", "prompt_tensors", "sample", "target_ids"]


@dataclass
class Pools:
    """Training cases by kind: ``real`` (real labels + pseudo regions, ids ≥ 10000) and ``phantom``."""

    real: list[TrainCase] = field(default_factory=list)
    phantom: list[TrainCase] = field(default_factory=list)

    def kinds(self, mix: dict[str, float]) -> tuple[list[str], np.ndarray]:
        have = {"real": any(target_ids(c, "real") for c in self.real),
                "pseudo": any(target_ids(c, "pseudo") for c in self.real),
                "shape": True, "phantom": bool(self.phantom)}
        kinds = [k for k, w in mix.items() if w > 0 and have.get(k, False)]
        if not kinds:
            raise InputError("no training cases: give real cases or phantoms.")
        w = np.array([mix[k] for k in kinds], float)
        return kinds, w / w.sum()


def target_ids(case: TrainCase, kind: str) -> list[int]:
    if kind == "pseudo":
        return [k for k in case.targets if k >= 10000]
    return [k for k in case.targets if k < 10000]


@dataclass
class Sample:
    image: torch.Tensor       # (C, d, h, w)
    target: np.ndarray        # (d, h, w) bool
    modality_id: int
    class_id: int = -1        # >= 0: prompt by name only
    flip_ok: bool = True


def _class_index(name: str, class_names: Sequence[str]) -> int:
    from radfm.tasks.segmentation.data import canonical_class_name

    canon = canonical_class_name(name)
    return list(class_names).index(canon) if canon in class_names else -1


def sample(pools: Pools, cfg: TrainConfig, rng: np.random.Generator, class_names: Sequence[str]) -> Sample:
    from radfm.tasks.segmentation.data import augment_intensity, insert_shape, random_crop

    kinds, weights = pools.kinds(cfg.mix)
    kind = str(rng.choice(kinds, p=weights))
    zoom = float(np.exp(rng.uniform(np.log(cfg.crop_zoom[0]), np.log(cfg.crop_zoom[1]))))
    size = cfg.crop_size
    if kind == "shape":
        if not (pools.real or pools.phantom):  # no volume at all: a SIMULATED textured background
            from radfm.tasks.segmentation.data import textured_background

            img, modality = textured_background(size, rng), int(rng.integers(2))
        else:
            case = pools.real[int(rng.integers(len(pools.real)))] if pools.real and (
                not pools.phantom or rng.random() < 0.6) else pools.phantom[int(rng.integers(len(pools.phantom)))]
            centre = [rng.uniform(0.25, 0.75) * s for s in case.labels.shape]
            img, _ = random_crop(case.image, case.labels, size, centre, rng, zoom=zoom)
            modality = case.modality_id
        img, target = insert_shape(img, rng, size_range=(8, max(10, int(min(size) * 0.95))))
        if target.sum() < 40:  # a sliver teaches nothing about borders
            return sample(pools, cfg, rng, class_names)
        return Sample(augment_intensity(img, rng), target, modality)
    pool = pools.phantom if kind == "phantom" else pools.real
    for _ in range(20):
        case = pool[int(rng.integers(len(pool)))]
        ids = target_ids(case, "pseudo" if kind == "pseudo" else "real")
        if ids:
            break
    obj = _size_weighted(case, ids, rng)
    name = case.targets[obj]
    cid = _class_index(name, class_names) if kind != "pseudo" else -1
    by_class = cid >= 0 and rng.random() < cfg.p_class / max(cfg.mix.get("real", 0.3), 1e-6) * 0.3
    if by_class:  # every voxel of that class (all components and, for merged names, all source labels)
        from radfm.tasks.segmentation.data import canonical_class_name

        same = [k for k, v in case.targets.items() if k < 10000 and canonical_class_name(v) == class_names[cid]]
        full = np.isin(case.labels, same)
    else:
        comps, n = ndimage.label(case.labels == obj)
        if n > 1:  # one connected component is one object for a click
            sizes = np.bincount(comps.ravel())[1:]
            ok = np.flatnonzero(sizes >= min(sizes.max(), max(10, 0.05 * sizes.max())))
            pick = int(rng.choice(ok)) + 1
            full = comps == pick
        else:
            full = comps == 1
    idx = np.argwhere(full)
    centre = idx[int(rng.integers(len(idx)))] if rng.random() < 0.5 else idx.mean(0)
    img, lab = random_crop(case.image, full.astype(np.int32), size, centre, rng, zoom=zoom)
    target = lab > 0
    if target.sum() < 40:
        return sample(pools, cfg, rng, class_names)
    return Sample(augment_intensity(img, rng), target, case.modality_id, class_id=cid if by_class else -1,
                  flip_ok=not by_class)


def _size_weighted(case: TrainCase, ids: list[int], rng: np.random.Generator) -> int:
    """One target id, with probability ∝ √voxels: large organs are prompted as often as users do.

    Uniform over labels, a CT with 30 ribs and vertebrae and one liver showed the liver in well
    under 1 % of samples, and the model learned that every click is a small object.
    """
    sizes = getattr(case, "_target_sizes", None)
    if sizes is None:
        counts = np.bincount(case.labels.ravel().clip(0))
        sizes = {k: int(counts[k]) if k < len(counts) else 0 for k in case.targets}
        case._target_sizes = sizes  # type: ignore[attr-defined]  # cache: labels never change
    w = np.sqrt(np.array([max(sizes.get(k, 0), 1) for k in ids], float))
    return int(ids[int(rng.choice(len(ids), p=w / w.sum()))])


def _interior_click(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random foreground voxel, biased to the interior (distance to the border ≥ a random fraction of its max)."""
    dist = ndimage.distance_transform_edt(np.pad(target, 1))[1:-1, 1:-1, 1:-1]
    cand = np.argwhere(dist >= rng.uniform(0.0, 0.7) * dist.max())
    return cand[int(rng.integers(len(cand)))].astype(float)


def first_prompt(s: Sample, cfg: TrainConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Points/labels/box/mask of round 0 for one sample (see the module doc)."""
    p: dict[str, Any] = {"points": [], "labels": [], "box": None, "mask": None, "class_id": s.class_id}
    if s.class_id >= 0:
        return p
    u = rng.random()
    if u < cfg.p_box:
        idx = np.argwhere(s.target)
        lo, hi = idx.min(0).astype(float), idx.max(0).astype(float)
        ext = hi - lo + 1
        jit = rng.uniform(-0.08, 0.08, 6) * np.concatenate([ext, ext])
        box = np.concatenate([lo, hi]) + jit
        p["box"] = np.clip(box, 0, np.array(list(s.target.shape) * 2) - 1)
        if rng.random() < 0.3:
            p["points"], p["labels"] = [_interior_click(s.target, rng)], [1]
        return p
    if u < cfg.p_box + cfg.p_mask_prompt:  # a corrupted previous mask + a corrective click
        m = s.target.copy()
        op = rng.integers(3)
        it = int(rng.integers(1, 4))
        m = ndimage.binary_dilation(m, iterations=it) if op == 0 else (
            ndimage.binary_erosion(m, iterations=it) if op == 1 else np.roll(m, int(rng.integers(-4, 5)), axis=int(rng.integers(3))))
        p["mask"] = m
        click = next_click(m, s.target, rng=rng, top_fraction=0.3)
        if click is not None:
            p["points"], p["labels"] = [click[0].astype(float)], [click[1]]
        else:
            p["points"], p["labels"] = [_interior_click(s.target, rng)], [1]
        return p
    p["points"], p["labels"] = [_interior_click(s.target, rng)], [1]
    return p


def prompt_tensors(prompts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad the batch's prompts to tensors (labels -1 = padding, NaN boxes = no box)."""
    n = max(1, max(len(p["points"]) for p in prompts))
    coords = torch.zeros(len(prompts), n, 3)
    labels = torch.full((len(prompts), n), -1, dtype=torch.long)
    boxes = torch.full((len(prompts), 6), float("nan"))
    cids = torch.tensor([p["class_id"] for p in prompts])
    for b, p in enumerate(prompts):
        for i, (pt, lab) in enumerate(zip(p["points"], p["labels"])):
            coords[b, i] = torch.as_tensor(pt, dtype=torch.float32)
            labels[b, i] = int(lab)
        if p["box"] is not None:
            boxes[b] = torch.as_tensor(p["box"], dtype=torch.float32)
    kw: dict[str, Any] = {"point_coords": coords, "point_labels": labels}
    if not torch.isnan(boxes).all():
        kw["boxes"] = boxes
    if (cids >= 0).any():
        kw["class_ids"] = cids
    return kw


def flip(s: Sample, rng: np.random.Generator) -> Sample:
    if not s.flip_ok:
        return s
    axes = [a for a in range(3) if rng.random() < 0.5]
    if not axes:
        return s
    img = torch.flip(s.image, [a + 1 for a in axes])
    return Sample(img, np.flip(s.target, axes).copy(), s.modality_id, s.class_id, s.flip_ok)
