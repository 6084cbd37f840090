"""The pretraining data: the per-rank stream of augmented crops, the held-out batch and its evaluation.

Determinism: every draw is a pure function of ``(seed, rank, volume/batch index)`` (see
``radfm.training.pretrain``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from radfm.errors import ConfigError
from radfm.models.encoder_config import MODALITY_IDS
from radfm.models.mae import (
    RadFMForMaskedVolumeModeling,
    flat_patch_baseline,
    mask_from_keep_indices,
)
from radfm.training.augment import augment_crop, center_crop
from radfm.training.pretrain_recipe import DataConfig, PretrainConfig, normalization_lists
from radfm.training.sources import TRAIN_SEED_MIN, PhantomSource, SourceSpec, build_source


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (``(seed, rank, stream, step, …)``), via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


_VOLUME_STREAM, _SAMPLE_STREAM, _MASK_STREAM, _STEP_STREAM = 1, 2, 3, 4


class PretrainStream(IterableDataset):
    """Endless stream of ready batches for one rank (``DataLoader(stream, batch_size=None)``).

    Batch ``b`` holds ``batch_size`` augmented crops, each from a volume drawn from the pool of
    ``pool_size`` volumes ``[b * new, b * new + pool_size)`` of the rank's volume sequence;
    volume ``v`` and sample ``(b, i)`` are pure functions of ``(seed, rank, v)`` and
    ``(seed, rank, b, i)``. With ``W`` workers, worker ``w`` makes the batches ``b ≡ w (mod W)``
    from volumes of its own lane (``v ≡ lane (mod W)``), so no volume is generated twice.

    Yields dicts: ``pixel_values (B, 1, D, H, W)`` float32, ``modality_ids (B,)`` long,
    ``volume_ids (B,)`` long, ``batch_index`` int.
    """

    def __init__(self, data: DataConfig, *, batch_size: int, seed: int, rank: int, start_batch: int = 0) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_batch = start_batch
        common = dict(modality_mix=data.modality_mix, normalization=normalization_lists(data),
                      target_spacing=tuple(data.target_spacing), ct_window=tuple(data.ct_window))
        built = [(build_source(spec, **common), spec.weight) for spec in data.sources]  # type: ignore[arg-type]
        self.sources = [s for s, _ in built if s is not None]
        if not self.sources:
            raise ConfigError("no data source is usable on this machine (see the log lines above).",
                              "Add a phantom source, or fix the folder paths.")
        w = np.asarray([wt for s, wt in built if s is not None], dtype=np.float64)
        self.source_p = w / w.sum()
        self._cache: dict[int, Any] = {}

    def describe(self) -> str:
        parts = [f"{s.kind} (p={p:.2f}{'' if isinstance(s, PhantomSource) else f', {len(s)} file(s)'})"
                 for s, p in zip(self.sources, self.source_p)]
        return ", ".join(parts)

    def volume(self, v: int) -> Any:
        """Volume ``v`` of this rank's sequence (a ``PreparedVolume``), cached while in the pool."""
        if v not in self._cache:
            rng = np.random.default_rng([self.seed, self.rank, _VOLUME_STREAM, v])
            src = self.sources[int(rng.choice(len(self.sources), p=self.source_p))]
            self._cache[v] = src.load(rng)
        return self._cache[v]

    def make_batch(self, b: int, lanes: int = 1) -> dict[str, Any]:
        """Batch ``b`` (see the class docstring); ``lanes`` = number of DataLoader workers (>= 1)."""
        d = self.data
        lane, k = b % lanes, b // lanes
        pool = [(j * lanes + lane) for j in range(k * d.new_volumes_per_batch, k * d.new_volumes_per_batch + d.pool_size)]
        for v in [v for v in self._cache if v not in pool]:
            del self._cache[v]
        crops, mods, vids = [], [], []
        for i in range(self.batch_size):
            rng = np.random.default_rng([self.seed, self.rank, _SAMPLE_STREAM, b, i])
            v = pool[int(rng.integers(len(pool)))]
            vol = self.volume(v)
            g = torch.Generator().manual_seed(int(rng.integers(2**62)))
            crops.append(augment_crop(vol.tensor, tuple(d.crop_size), d.augment, g))  # type: ignore[arg-type]
            mods.append(MODALITY_IDS.get(vol.modality, MODALITY_IDS["other"]))
            vids.append(v)
        return {"pixel_values": torch.stack(crops), "modality_ids": torch.tensor(mods, dtype=torch.long),
                "volume_ids": torch.tensor(vids, dtype=torch.long), "batch_index": b}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, lanes = (info.id, info.num_workers) if info is not None else (0, 1)
        # DataLoader takes one batch from each worker in turn, so worker `wid` makes
        # start + wid, start + wid + W, … and the main process receives them in order.
        b = self.start_batch + wid
        while True:
            yield self.make_batch(b, lanes)
            b += lanes


def heldout_batch(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Fixed held-out evaluation crops: phantoms with seeds ``0 … eval_volumes-1`` (training
    phantoms use seeds >= ``TRAIN_SEED_MIN``), alternating CT/MR and torso/head, each modality's
    first normalisation, centre crop of ``crop_size``, no augmentation. ``pixel_values (n, 1, D, H, W)``, ``modality_ids (n,)``."""
    d = cfg.data
    assert d.eval_volumes < TRAIN_SEED_MIN
    norm = normalization_lists(d)
    src = PhantomSource(SourceSpec(kind="phantom"), modality_mix=d.modality_mix, normalization=norm,
                        target_spacing=tuple(d.target_spacing), ct_window=tuple(d.ct_window))  # type: ignore[arg-type]
    crops, mods = [], []
    for i in range(d.eval_volumes):
        modality = ("CT", "MR")[i % 2]
        body = ("chest_abdomen", "head")[(i // 2) % 2]
        vol = src.make(i, modality, body, tuple(d.eval_shape), norm.get(modality, ["percentile"])[0])  # type: ignore[arg-type]
        crops.append(center_crop(vol.tensor, tuple(d.crop_size)))  # type: ignore[arg-type]
        mods.append(MODALITY_IDS[modality])
    return {"pixel_values": torch.stack(crops), "modality_ids": torch.tensor(mods, dtype=torch.long)}


@torch.no_grad()
def evaluate(model: RadFMForMaskedVolumeModeling, batch: dict[str, torch.Tensor], keep: torch.Tensor, *,
             chunk: int, autocast: Any = nullcontext) -> dict[str, float]:
    """Masked-reconstruction loss on the held-out batch with fixed masks ``keep (n, N_keep)``:
    overall, per modality (mean over samples), and ``eval_flat_baseline``: the loss of predicting
    each hidden patch flat at its own mean (see ``flat_patch_baseline``; beating it means the
    model predicts structure, not only intensity levels)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for s in range(0, batch["pixel_values"].shape[0], chunk):
        with autocast():
            out = model(batch["pixel_values"][s:s + chunk].to(device),
                        modality_ids=batch["modality_ids"][s:s + chunk].to(device),
                        keep_indices=keep[s:s + chunk].to(device))
        losses.append(out.per_sample_loss.float().cpu())
    model.train(was_training)
    per = torch.cat(losses)
    cfg = model.config
    n_tokens = math.prod(model.grid_size(tuple(batch["pixel_values"].shape[2:])))
    _, flat = flat_patch_baseline(batch["pixel_values"], mask_from_keep_indices(keep, n_tokens),
                                  model.mask_patch_size, norm_pix_loss=cfg.norm_pix_loss,
                                  norm_pix_eps=cfg.norm_pix_eps)
    result = {"eval_loss": float(per.mean()), "eval_flat_baseline": float(flat.mean())}
    for name, mid in MODALITY_IDS.items():
        sel = batch["modality_ids"] == mid
        if sel.any():
            result[f"eval_loss_{name}"] = float(per[sel].mean())
    return result


