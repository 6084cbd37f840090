"""Self-supervised pretraining of the shared encoder (3D MAE) with ``accelerate``.

One function, :func:`run_pretraining`, runs the same recipe on this CPU, on one GPU and on many
(``accelerate launch --num_processes N [--num_machines M …] -m radfm.cli pretrain -c …``: DDP,
one process per device, each with its own data stream). Read top to bottom: the recipe
dataclasses, the data stream, the held-out evaluation, the loop.

Determinism: every random draw of optimizer step ``s`` on rank ``r`` comes from ``(seed, r, s)``
(volumes, crops, augmentations, masks, drop-path), so a run is reproducible given its seed,
world size and ``data.num_workers``; different ranks see different data; and a resumed run
continues exactly as an uninterrupted one (the step number is the only stream state).

Distributed notes:
- DDP (accelerate's default for several processes) needs every trainable parameter to receive
  a gradient. The encoder's feature pyramid is unused by MAE, so it is frozen here
  (``requires_grad=False``) instead of paying for ``find_unused_parameters=True``; it keeps its
  initialisation and is trained by the dense tasks later.
- Large presets (base/large) on several GPUs: use FSDP through accelerate's own config, no code
  change: ``accelerate config`` -> FSDP, ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP``,
  ``fsdp_transformer_layer_cls_to_wrap: Block`` (the encoder's and decoder's transformer
  block; ``RadFMEncoder._no_split_modules`` names it), ``fsdp_sharding_strategy: FULL_SHARD``,
  ``fsdp_state_dict_type: FULL_STATE_DICT``, ``mixed_precision: bf16``; then
  ``accelerate launch --config_file fsdp.yaml -m radfm.cli pretrain -c configs/pretrain/….yaml``.
  Checkpoints here save the full (gathered) state from the main process, which is what
  ``FULL_STATE_DICT`` gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from radfm.config import to_dict
from radfm.errors import ConfigError
from radfm.models.encoder_config import MODALITY_IDS, RadFMEncoderConfig
from radfm.models.mae import (
    RadFMForMaskedVolumeModeling,
    RadFMMAEConfig,
    flat_patch_baseline,
    mask_from_keep_indices,
)
from radfm.preprocess.plan import PreprocessPlan
from radfm.training.augment import AugmentConfig, augment_crop, center_crop
from radfm.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from radfm.training.sources import TRAIN_SEED_MIN, PhantomSource, SourceSpec, build_source

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainStream",
    "build_model",
    "export_encoder",
    "heldout_batch",
    "run_pretraining",
]


# ----------------------------------------------------------------------------- the recipe
@dataclass
class ModelConfig:
    """Which encoder to pretrain and the MAE around it.

    Attributes:
        preset: encoder size (``RadFMEncoderConfig.from_preset``: tiny, small, base, large).
        overrides: encoder config fields changed from the preset (``hidden_size: 192`` …).
        decoder_hidden_size, decoder_layers, decoder_heads: the light MAE decoder.
        mask_ratio: fraction of patches hidden per sample.
        norm_pix_loss, norm_pix_eps: per-patch normalised targets (see ``radfm.models.mae``).
        init_encoder: an encoder folder (``save_pretrained``) to continue pretraining from.
    """

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    decoder_hidden_size: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    norm_pix_eps: float = 1e-2
    init_encoder: str | None = None


@dataclass
class DataConfig:
    """What the encoder sees.

    Attributes:
        sources: where volumes come from (``SourceSpec``: phantom / folder / shared / packages).
        crop_size: training crop ``(D, H, W)`` voxels at ``target_spacing``; a multiple of the patch.
        target_spacing: mm per voxel along canonical ``(X, Y, Z)``; every volume is resampled to it.
        modality_mix: probability of each modality for phantoms (real volumes bring their own).
        normalization: ``PreprocessPlan.normalization`` per modality (others: percentile); a list
            means each volume draws one of them (e.g. CT both windowed and percentile-normalised,
            so the encoder serves tasks that chose either plan).
        ct_window: HU window of ``ct_window`` normalisation.
        pool_size: volumes held in memory per stream; each crop picks one of them.
        new_volumes_per_batch: volumes replaced in the pool per batch. Each volume yields about
            ``batch_size / new_volumes_per_batch`` augmented crops, which is what makes
            on-the-fly phantoms (about 0.2 s each) affordable.
        num_workers: DataLoader worker processes per rank (0 = in the training process).
        augment: see ``AugmentConfig``.
        eval_volumes: held-out phantoms (seeds 0…n-1, never trained on) for the evaluation.
        eval_shape: canonical ``(X, Y, Z)`` size of those phantoms at ``target_spacing``.
    """

    sources: list[SourceSpec] = field(default_factory=lambda: [SourceSpec(kind="phantom")])
    crop_size: tuple[int, int, int] = (32, 32, 32)
    target_spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    modality_mix: dict[str, float] = field(default_factory=lambda: {"CT": 0.5, "MR": 0.5})
    normalization: dict[str, str | list[str]] = field(
        default_factory=lambda: {"CT": "ct_window", "MR": "percentile"})
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    pool_size: int = 8
    new_volumes_per_batch: int = 1
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_volumes: int = 4
    eval_shape: tuple[int, int, int] = (64, 64, 64)


@dataclass
class OptimConfig:
    """AdamW with linear warmup and a cosine decay to ``min_lr`` at ``steps``.

    ``lr`` is per optimizer step for the global batch (``batch_size * grad_accum_steps *
    processes``); scale it yourself when changing the global batch (MAE: lr ∝ batch).
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    grad_clip: float = 1.0


@dataclass
class PretrainConfig:
    """A pretraining recipe (``configs/pretrain/*.yaml``).

    Attributes:
        batch_size: crops per process per micro-step.
        steps: optimizer steps in the whole run (the LR schedule ends there).
        grad_accum_steps: micro-steps per optimizer step.
        mixed_precision: "bf16" autocast (CPU with AMX and recent GPUs: ~1.5-3x faster) or "no".
        seed: the one seed of the run.
        log_every, eval_every, checkpoint_every: in optimizer steps (0 = never; the last step
            is always evaluated and checkpointed).
        keep_checkpoints: newest checkpoints kept (0 = all).
        output_dir: metrics.jsonl, loss_curve.png, checkpoints/, encoder/ (the export).
        resume: continue from the newest checkpoint in ``output_dir``.
        stop_at_step: end this invocation after that step without exporting (time-sliced jobs;
            the schedule still follows ``steps``; continue with ``resume``).
        threads: torch CPU threads per process (``None``: torch's default).
        export_dtype: dtype of the exported encoder's weights on disk ("bfloat16" halves the size;
            its config still says float32, so ``from_pretrained`` builds a float32 model).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 4
    steps: int = 100
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "bf16"] = "no"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    output_dir: str = "runs/pretrain"
    resume: bool = False
    stop_at_step: int | None = None
    threads: int | None = None
    export_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.data.pool_size < 1 or self.data.new_volumes_per_batch < 1:
            raise ConfigError("data.pool_size and data.new_volumes_per_batch must be >= 1.")
        if not self.data.sources:
            raise ConfigError("data.sources is empty.", "Add at least one source, e.g. - kind: phantom")
        bad = sorted(set(self.data.modality_mix) - {"CT", "MR"})
        if bad or not self.data.modality_mix or min(self.data.modality_mix.values()) < 0:
            raise ConfigError(f"data.modality_mix must map CT/MR to weights >= 0, got {self.data.modality_mix}.")
        norm = self.data.normalization
        if not isinstance(norm, dict) or any(not isinstance(v, (str, list)) or not v for v in norm.values()):
            raise ConfigError(f"data.normalization must map a modality to a method or a list of methods, got {norm}.")
        bad = sorted({m for v in norm.values() for m in ([v] if isinstance(v, str) else v)}
                     - {"ct_window", "zscore", "percentile"})
        if bad:
            raise ConfigError(f"data.normalization: unknown method(s) {bad}.", "Use ct_window, zscore or percentile.")


def encoder_config_of(cfg: PretrainConfig) -> RadFMEncoderConfig:
    return RadFMEncoderConfig.from_preset(cfg.model.preset, **cfg.model.overrides)


def build_model(cfg: PretrainConfig) -> RadFMForMaskedVolumeModeling:
    """The MAE of a recipe (seeded by ``cfg.seed``), pyramid frozen (see the module docstring)."""
    enc = encoder_config_of(cfg)
    if any(c % p for c, p in zip(cfg.data.crop_size, enc.patch_size)):  # the CNN's "patch" is its stride
        raise ConfigError(f"data.crop_size {tuple(cfg.data.crop_size)} is not a multiple of the encoder's "
                          f"patch size {tuple(enc.patch_size)}.")
    m = cfg.model
    config = RadFMMAEConfig(encoder_config=enc, decoder_hidden_size=m.decoder_hidden_size,
                            decoder_layers=m.decoder_layers, decoder_heads=m.decoder_heads,
                            mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss, norm_pix_eps=m.norm_pix_eps)
    torch.manual_seed(cfg.seed)
    model = RadFMForMaskedVolumeModeling(config)
    if m.init_encoder:
        from radfm.models.encoder import RadFMEncoder

        loaded = RadFMEncoder.from_pretrained(m.init_encoder, dtype=torch.float32)
        model.encoder.load_state_dict(loaded.state_dict())
    if enc.architecture != "cnn":  # a ViT's pyramid gets no gradient from MAE; a CNN has none
        model.encoder.pyramid.requires_grad_(False)
    return model


def pretrain_plan(cfg: PretrainConfig) -> PreprocessPlan:
    """The plan saved beside the exported encoder: MR's (first) normalisation as the default for
    "any", the per-modality choices in ``notes``."""
    d = cfg.data
    enc = encoder_config_of(cfg)
    norm = normalization_lists(d)
    notes = {f"normalization_{mod}": ", ".join(methods) for mod, methods in sorted(norm.items())}
    notes["pretraining"] = ("MAE self-supervised; each volume was normalised with one of the methods "
                            "listed per modality; this plan's own normalization is MR's first one. For a "
                            "CT-only task use dataclasses.replace(plan, modality='CT', normalization=...).")
    return PreprocessPlan(
        modality="any",
        target_spacing=tuple(d.target_spacing),  # type: ignore[arg-type]
        normalization=norm.get("MR", ["percentile"])[0],  # type: ignore[arg-type]
        ct_window=tuple(d.ct_window),  # type: ignore[arg-type]
        patch_size=tuple(d.crop_size),  # type: ignore[arg-type]
        pad_multiple=tuple(enc.patch_size),  # type: ignore[arg-type]
        notes=notes,
    )


def export_encoder(encoder: torch.nn.Module, directory: str | Path, *, plan: PreprocessPlan,
                   dtype: str = "float32") -> Path:
    """Write ``encoder`` alone (config.json, model.safetensors) and its ``preprocess_plan.json``.

    ``dtype="bfloat16"`` stores the weights in bfloat16 but keeps ``"dtype": "float32"`` in
    config.json, so ``RadFMEncoder.from_pretrained`` upcasts on load (small file, float32 model).
    """
    import copy

    directory = Path(directory)
    enc = copy.deepcopy(encoder).to(torch.bfloat16) if dtype == "bfloat16" else encoder
    enc.save_pretrained(directory)
    cfg_path = directory / "config.json"
    config = json.loads(cfg_path.read_text())
    config["dtype"] = "float32"
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    plan.save(directory)
    return directory


# ----------------------------------------------------------------------------- data
def normalization_lists(data: DataConfig) -> dict[str, list[str]]:
    """``data.normalization`` with every value as a list of methods."""
    return {k: [v] if isinstance(v, str) else list(v) for k, v in data.normalization.items()}


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


# ----------------------------------------------------------------------------- the loop
def _lr_lambda(cfg: OptimConfig, steps: int) -> Any:
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def f(step: int) -> float:  # step = optimizer steps done so far
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and tokens (MAE/ViT practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("mask_token", "cls_token", "pos_table")) or "modality_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _tensor_hash(tensors: dict[str, torch.Tensor] | torch.Tensor) -> str:
    h = hashlib.sha256()
    items = sorted(tensors.items()) if isinstance(tensors, dict) else [("", tensors)]
    for name, t in items:
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", 0) <= up_to_step]


def _save_curve(output_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``loss_curve.png``: training loss and held-out loss (each at its own steps) vs step."""
    from radfm.viz import save_curve

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return
    # save_curve plots every series against one x axis: put both on the union of steps,
    # filling the gaps by linear interpolation (the held-out loss is measured less often).
    xs = sorted({x for x, _ in train} | {x for x, _ in evals})
    series = {}
    for name, pts in (("training (masked MSE)", train), ("held-out phantoms (masked MSE)", evals)):
        if pts:
            px, py = zip(*pts)
            series[name] = [float(v) for v in np.interp(xs, px, py)]
    save_curve(output_dir / "loss_curve.png", xs, series, xlabel="optimizer step",
               ylabel="masked reconstruction MSE", title="MAE pretraining")


def run_pretraining(cfg: PretrainConfig) -> Path:
    """Pretrain the encoder as ``cfg`` says; returns the exported encoder folder
    (``output_dir/encoder``: config.json, model.safetensors, preprocess_plan.json), or the last
    checkpoint folder when ``stop_at_step`` ended the invocation early.

    Writes ``metrics.jsonl`` (one JSON object per log/eval event), ``loss_curve.png``,
    ``pretrain_config.yaml``, ``checkpoints/`` and ``ranks/rank<r>.json``
    (first-batch and final-weight fingerprints of each process: identical weights, different
    data) in ``output_dir``.
    """
    from accelerate import Accelerator  # after radfm (imported above): the torchvision shim
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Launched as several processes on a machine without GPUs (``accelerate launch --multi_gpu``,
    # torchrun): accelerate needs cpu=True to form a gloo process group instead of running each
    # process alone.
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu_ddp)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    out = Path(cfg.output_dir)

    model = build_model(cfg)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))  # type: ignore[arg-type]
    # Not passed through accelerator.prepare: its wrapper would step the schedule once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.optim, cfg.steps))

    start_step = 0
    ckpt = latest_checkpoint(out)
    if cfg.resume and ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        start_step = int(state["step"])
        if state.get("world_size", world) != world:
            log.warning("resuming a run made with %s process(es) on %d: the data stream differs from then.",
                        state.get("world_size"), world)
        log.info("resumed from %s (step %d)", ckpt, start_step)
    elif ckpt is not None:
        raise ConfigError(f"{out} already holds checkpoints of a run (newest: {ckpt.name}).",
                          "Pass --resume (resume=true) to continue it, or choose another output_dir.")
    elif cfg.resume:
        log.info("resume requested but %s has no checkpoint: starting from step 0", out)
    accelerator.wait_for_everyone()  # nobody writes before every rank has checked for checkpoints

    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    stream = PretrainStream(cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank,
                            start_batch=start_step * cfg.grad_accum_steps)
    workers = cfg.data.num_workers
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    batches = iter(loader)

    metrics_path = out / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    eval_batch = eval_keep = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        rows = _read_metrics(metrics_path, start_step)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if cfg.data.eval_volumes > 0:
            eval_batch = heldout_batch(cfg)
            grid = unwrapped.grid_size(tuple(cfg.data.crop_size))
            eval_keep = unwrapped.random_keep_indices(
                cfg.data.eval_volumes, grid[0] * grid[1] * grid[2], generator=torch.Generator().manual_seed(1234))
        n_params = sum(p.numel() for p in unwrapped.encoder.parameters())
        log.info("pretraining a %.2f M-parameter encoder (%s) on %d process(es); data: %s",
                 n_params / 1e6, cfg.model.preset, world, stream.describe())

    def write_row(row: dict[str, Any]) -> None:
        rows.append(row)
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def run_eval(step: int) -> None:
        if eval_batch is None:
            return
        res = evaluate(unwrapped, eval_batch, eval_keep, chunk=cfg.batch_size, autocast=accelerator.autocast)
        write_row({"step": step, **{k: round(v, 6) for k, v in res.items()}})
        log.info("step %d: held-out masked loss %.4f (flat-patch baseline %.4f)", step, res["eval_loss"],
                 res["eval_flat_baseline"])

    if main and start_step == 0:
        run_eval(0)
    accelerator.wait_for_everyone()

    end = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step is not None else cfg.steps
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not main, desc="pretrain", unit="step",
               dynamic_ncols=True, mininterval=2.0)
    global_batch = cfg.batch_size * cfg.grad_accum_steps * world
    loss_sum, loss_n = torch.zeros((), device=accelerator.device), 0
    t_last, steps_since, t_start = time.perf_counter(), 0, time.perf_counter()
    grad_norm = torch.zeros(())
    first_hash: str | None = None
    model.train()
    step = start_step
    while step < end:
        torch.manual_seed(derive_seed(cfg.seed, rank, _STEP_STREAM, step))  # drop-path, anything global
        for micro in range(cfg.grad_accum_steps):
            batch = next(batches)
            if step == start_step and micro == 0:
                first_hash = _tensor_hash(batch["pixel_values"])
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, rank, _MASK_STREAM, step, micro))
            sync = micro == cfg.grad_accum_steps - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                result = model(batch["pixel_values"].to(accelerator.device),
                               modality_ids=batch["modality_ids"].to(accelerator.device), generator=gen)
                accelerator.backward(result.loss / cfg.grad_accum_steps)
            loss_sum += result.loss.detach()
            loss_n += 1
        if cfg.optim.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_since += 1
        bar.update(1)

        if cfg.log_every and (step % cfg.log_every == 0 or step == end):
            mean_loss = float(accelerator.reduce(loss_sum / max(loss_n, 1), reduction="mean"))
            now = time.perf_counter()
            vps = steps_since * global_batch / max(now - t_last, 1e-9)
            if main:
                write_row({"step": step, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                           "grad_norm": round(float(grad_norm), 4), "volumes_per_s": round(vps, 2),
                           "elapsed_s": round(now - t_start, 1)})
                bar.set_postfix(loss=f"{mean_loss:.4f}", vol_s=f"{vps:.1f}")
                log.info("step %d/%d: loss %.4f, %.1f volumes/s", step, cfg.steps, mean_loss, vps)
            loss_sum.zero_()
            loss_n, t_last, steps_since = 0, now, 0

        last = step == end
        if main and (last or (cfg.eval_every and step % cfg.eval_every == 0)):
            run_eval(step)
            _save_curve(out, rows)
        if main and (last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
            save_checkpoint(checkpoint_dir(out, step), model=unwrapped, optimizer=optimizer, scheduler=scheduler,
                            state={"step": step, "seed": cfg.seed, "world_size": world,
                                   "num_workers": cfg.data.num_workers,
                                   "rng": "every draw of step s on rank r derives from (seed, r, s)",
                                   "samples_seen": step * global_batch, "config": to_dict(cfg)})
            prune_checkpoints(out, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
    bar.close()

    weights_hash = _tensor_hash({k: v for k, v in unwrapped.state_dict().items()})
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "ranks" / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": world, "start_step": start_step, "end_step": step,
        "first_batch_sha256": first_hash, "weights_sha256": weights_hash}) + "\n")
    accelerator.wait_for_everyone()
    if step < cfg.steps:
        log.info("stopped at step %d of %d (stop_at_step); continue with resume=true", step, cfg.steps)
        return checkpoint_dir(out, step)
    export = out / "encoder"
    if main:
        export_encoder(unwrapped.encoder, export, plan=pretrain_plan(cfg), dtype=cfg.export_dtype)
        log.info("pretraining done in %.0f s; encoder exported to %s", time.perf_counter() - t_start, export)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export
