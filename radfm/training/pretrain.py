"""Self-supervised pretraining of the shared encoder (3D MAE) with ``accelerate``.

One function, :func:`run_pretraining`, runs the same recipe on this CPU, on one GPU and on many
(``accelerate launch --num_processes N [--num_machines M …] -m radfm.cli pretrain -c …``: DDP,
one process per device, each with its own data stream). The recipe dataclasses live in
``radfm.training.pretrain_recipe``, the data stream and held-out evaluation in
``radfm.training.pretrain_data``; this module is the loop (and re-exports both).

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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from radfm.config import to_dict
from radfm.errors import ConfigError
from radfm.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from radfm.training.pretrain_data import (
    _MASK_STREAM,
    _STEP_STREAM,
    PretrainStream,
    derive_seed,
    evaluate,
    heldout_batch,
)
from radfm.training.pretrain_recipe import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    build_model,
    export_encoder,
    pretrain_plan,
)

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
