"""Training with simulated interaction, and the click protocol shared with evaluation.

Read top to bottom: the click simulator (used by training, the learning test and the benchmark, so
every method is clicked the same way), training cases, sampling (real labels, pseudo-masks,
inserted shapes, phantoms: :mod:`radfm.tasks.segmentation.data`), the loop.

One training step: ``batch_size`` crops, each with one target object and a first prompt (an
interior click, a jittered box with or without a click, a class name, or a corrupted previous
mask with a corrective click); the image embedding once; then ``k`` corrective rounds without
gradient (``k`` uniform in ``0..max_rounds``: a click from the largest error region of the current
mask, :func:`next_click`, and the current logits fed back as the previous mask), and the last
round with gradient. Loss: Dice + BCE of the mask, MSE of the quality head against the mask's
actual Dice. The loop runs on ``accelerate`` (``radfm train segmentation``), bf16 autocast on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.segmentation.cases import phantom_cases
from radfm.tasks.segmentation.interaction import next_click
from radfm.tasks.segmentation.model import RadFMPromptSegmenter
from radfm.tasks.segmentation.sampling import Pools, first_prompt, flip, prompt_tensors, sample

__all__ = ["SegRecipe", "TrainConfig", "build_model", "build_pools", "default_plan", "export_shipped", "run_recipe",
           "seg_loss", "train"]

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """Knobs of :func:`train` (``configs/segmentation/*.yaml`` sets them; unknown keys are errors).

    ``mix``: sampling weights of the four kinds of training object (``real`` labels, ``pseudo``
    regions on real volumes, ``shape`` inserted into any background, ``phantom`` labels); kinds
    without cases are dropped. ``crop_zoom``: range of the field-of-view scale of a crop.
    """

    steps: int = 1000
    batch_size: int = 2
    crop_size: tuple[int, int, int] = (64, 64, 64)
    crop_zoom: tuple[float, float] = (0.75, 1.5)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    max_rounds: int = 2
    p_box: float = 0.25
    p_class: float = 0.12
    p_mask_prompt: float = 0.1
    mix: dict[str, float] = field(default_factory=lambda: {"real": 0.3, "pseudo": 0.2, "shape": 0.3, "phantom": 0.2})
    bf16: bool = True
    seed: int = 0
    log_every: int = 25
    threads: int | None = None
    lora: bool = False




def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE per sample, averaged: ``(B, 1, D, H, W)`` logits and {0, 1} target."""
    lg = logits.float()
    prob = torch.sigmoid(lg)
    dims = (1, 2, 3, 4)
    inter = (prob * target).sum(dims)
    dice = 1 - (2 * inter + 1.0) / (prob.sum(dims) + target.sum(dims) + 1.0)
    bce = F.binary_cross_entropy_with_logits(lg, target, reduction="none").mean(dims)
    return (dice + bce).mean()


def train(model: RadFMPromptSegmenter, pools: Pools, cfg: TrainConfig, *, progress: bool = True,
          accelerator: Any = None, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place (encoder and decoder, or encoder LoRA + decoder with ``cfg.lora``).

    Returns ``{"loss": [per step], "seconds", "trainable", "peft_model"}``.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net: Any = model
    peft_model = None
    if cfg.lora:
        from radfm.tasks.segmentation.model import attach_seg_lora

        peft_model = net = attach_seg_lora(model)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    net, opt = acc.prepare(net, opt)
    core = acc.unwrap_model(net)
    seg: RadFMPromptSegmenter = core.base_model.model if cfg.lora else core  # type: ignore[assignment]
    class_names = list(model.config.class_names)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    losses: list[float] = []
    t0 = time.perf_counter()
    net.train()
    bar = tqdm(range(cfg.steps), desc="segmentation", disable=not progress or not acc.is_main_process)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        samples = [flip(sample(pools, cfg, rng, class_names), rng) for _ in range(cfg.batch_size)]
        prompts = [first_prompt(s, cfg, rng) for s in samples]
        x = torch.stack([s.image for s in samples]).to(acc.device)
        target = torch.from_numpy(np.stack([s.target for s in samples])[:, None].astype(np.float32)).to(acc.device)
        modality = torch.tensor([s.modality_id for s in samples], device=acc.device)
        use_mod = seg.encoder.modality_embed is not None
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            emb = seg.get_image_embeddings(x, modality if use_mod else None)
            mask_in = None
            if any(p["mask"] is not None for p in prompts):
                m = np.stack([p["mask"] if p["mask"] is not None else np.zeros_like(s.target)
                              for p, s in zip(prompts, samples)])
                mask_in = torch.from_numpy(np.where(m, 4.0, -4.0).astype(np.float32))[:, None].to(acc.device)
            for _ in range(int(rng.integers(0, cfg.max_rounds + 1))):
                with torch.no_grad():
                    out = seg.decode(emb, mask_inputs=mask_in, **prompt_tensors(prompts))
                pred = (out.masks[:, 0] > 0).cpu().numpy()
                for b, (p, s) in enumerate(zip(prompts, samples)):
                    if p["class_id"] >= 0:
                        continue
                    click = next_click(pred[b], s.target, rng=rng, top_fraction=0.3)
                    if click is not None:
                        p["points"].append(click[0].astype(float))
                        p["labels"].append(click[1])
                mask_in = out.masks.detach().float()
            out = seg.decode(emb, mask_inputs=mask_in, **prompt_tensors(prompts))
            loss_mask = seg_loss(out.masks, target)
            with torch.no_grad():
                hard = (out.masks.float() > 0).float()
                inter = (hard * target).sum((1, 2, 3, 4))
                real = 2 * inter / (hard.sum((1, 2, 3, 4)) + target.sum((1, 2, 3, 4))).clamp_min(1.0)
            loss = loss_mask + F.mse_loss(out.iou_predictions.float()[:, 0], real)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.3f}")
    net.eval()
    trainable = sum(p.numel() for p in params)
    return {"loss": losses, "seconds": time.perf_counter() - t0, "trainable": trainable, "peft_model": peft_model}


# ----------------------------------------------------------------------------- building the shipped model
def default_plan() -> PreprocessPlan:
    """The shipped model's input recipe: 2 mm isotropic; CT through the soft-tissue map, MR percentile.

    Why 2 mm: a 128³ window covers 256 mm (a liver, both lungs, a brain) at a click cost that a
    2-core CPU answers in about a second, while lesions of 10 mm still span five voxels. Why
    ``"auto"``: under a p0.5..p99.5 map (air to bone) the 10–20 HU between liver, spleen and kidney
    are ~1 % of the range, below the training noise; ``ct_soft_tissue`` keeps them visible.
    """
    return PreprocessPlan(modality="any", target_spacing=(2.0, 2.0, 2.0), normalization="auto",
                          patch_size=(64, 64, 64), pad_multiple=(16, 16, 16),
                          notes={"task": "prompt segmentation",
                                 "why": "one recipe for CT (soft-tissue tanh map) and MR (percentile)"})


def build_model(encoder: Any = None, *, encoder_source: str = "included", class_names: Sequence[str] = (),
                window: Sequence[int] = (128, 128, 128), **config: Any) -> RadFMPromptSegmenter:
    """A new segmenter around ``encoder`` (default: a random-init "cnn-tiny" encoder)."""
    from radfm.models.encoder import RadFMEncoder
    from radfm.models.encoder_config import RadFMEncoderConfig

    if encoder is None:
        encoder = RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny"))
    return RadFMPromptSegmenter.from_encoder(encoder, encoder_source=encoder_source, class_names=list(class_names),
                                             window_size=list(window), **config)


def build_pools(plan: PreprocessPlan, *, phantoms: int, seed: int, real: bool = True,
                root: Path | None = None) -> Pools:
    """Training pools: the real training split (labels + pseudo-masks) and ``phantoms`` SIMULATED cases."""
    from radfm.tasks.segmentation.data import load_real_cases

    pools = Pools(phantom=phantom_cases(phantoms, plan, seed=seed, progress=True) if phantoms else [])
    if real:
        from radfm.training.sources import shared_data_root

        pools.real = load_real_cases(plan, split="train", root=root or shared_data_root(), seed=seed)
    return pools


@dataclass
class SegRecipe:
    """A prompt-segmentation training run (``configs/segmentation/*.yaml``; unknown keys are errors).

    ``init_encoder``: an encoder folder to start from (e.g. a ``radfm pretrain`` output's
    ``encoder/``), else a fresh ``preset``; ``init_model``: a whole segmenter folder to continue
    from (encoder and decoder; a new schedule); ``encoder_out``: where the trained shared encoder is also
    saved; ``phantoms``: SIMULATED training cases; ``real``: the real training split of
    ``radfm.tasks.segmentation.data.REAL_CASES`` (labels + pseudo-masks).
    """

    output_dir: str = "runs/segmentation"
    preset: str = "cnn-small"
    init_encoder: str | None = None
    init_model: str | None = None
    encoder_out: str | None = None
    phantoms: int = 24
    real: bool = True
    window: tuple[int, int, int] = (96, 96, 96)
    inference_spacings: tuple[float, ...] = (3.0, 4.0, 5.0)
    checkpoint_every: int = 200
    train: TrainConfig = field(default_factory=TrainConfig)


def run_recipe(recipe: SegRecipe) -> Path:
    """Train the shared encoder and the prompt decoder together; save both, the loss curve and a summary."""
    from radfm.models.encoder import RadFMEncoder
    from radfm.models.encoder_config import RadFMEncoderConfig
    from radfm.tasks.segmentation.data import CLASS_VOCABULARY
    from radfm.viz import save_curve

    out = Path(recipe.output_dir)
    plan = default_plan()
    cfg = recipe.train
    torch.manual_seed(cfg.seed)
    if recipe.init_encoder:
        encoder = RadFMEncoder.from_pretrained(recipe.init_encoder, dtype=torch.float32)
    else:
        encoder = RadFMEncoder(RadFMEncoderConfig.from_preset(recipe.preset))
    model = build_model(encoder, class_names=CLASS_VOCABULARY, window=recipe.window,
                        inference_spacings=list(recipe.inference_spacings))
    if recipe.init_model:
        model.load_state_dict(RadFMPromptSegmenter.from_pretrained(recipe.init_model).state_dict())
    model.preprocess_plan = plan
    pools = build_pools(plan, phantoms=recipe.phantoms, seed=cfg.seed, real=recipe.real)
    log.info("training pools: %d real (%s), %d phantoms", len(pools.real), [c.case_id for c in pools.real],
             len(pools.phantom))
    out.mkdir(parents=True, exist_ok=True)

    def on_step(step: int, loss: float) -> None:
        if step and step % recipe.checkpoint_every == 0:
            model.save_pretrained(out / "checkpoint")

    result = train(model, pools, cfg, on_step=on_step)
    model.save_pretrained(out / "model")
    if recipe.encoder_out:
        model.encoder.save_pretrained(recipe.encoder_out)
        plan.save(recipe.encoder_out)
    losses = np.asarray(result["loss"], np.float32)
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    save_curve(out / "loss_curve.png", list(range(len(smooth))), {"train loss (running mean)": smooth.tolist()},
               xlabel="step", ylabel="Dice + BCE + quality MSE", title="prompt segmentation training")
    summary = {"recipe": asdict(recipe), "seconds": result["seconds"], "trainable_parameters": result["trainable"],
               "real_cases": [c.case_id for c in pools.real], "phantoms": len(pools.phantom),
               "loss_first_50": float(losses[:50].mean()), "loss_last_50": float(losses[-50:].mean())}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out


def export_shipped(model_dir: str | Path, *, weights_dir: str | Path, encoder_dir: str | Path) -> None:
    """Split a trained run (encoder included) into the package layout, weights in bfloat16 on disk.

    The encoder goes to ``encoder_dir`` (``radfm/starter/cnn_encoder``: the shared encoder other
    heads adapt), the decoder with ``encoder_source="starter-cnn"`` to ``weights_dir``; both keep
    ``"dtype": "float32"`` in config.json so they load as float32 models.
    """
    import copy

    from radfm.training.pretrain import export_encoder

    model = RadFMPromptSegmenter.from_pretrained(model_dir).float()
    plan = model.preprocess_plan or default_plan()
    export_encoder(model.encoder, encoder_dir, plan=plan, dtype="bfloat16")
    head = copy.deepcopy(model).to(torch.bfloat16)
    head.config.encoder_source = "starter-cnn"
    head.preprocess_plan = plan
    head.save_pretrained(weights_dir, include_encoder=False)
    cfg_path = Path(weights_dir) / "config.json"
    config = json.loads(cfg_path.read_text())
    config["dtype"] = "float32"
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m radfm.tasks.segmentation.train -c RECIPE [key=value …]`` (= ``radfm train segmentation``)."""
    from radfm.config import load_config

    p = argparse.ArgumentParser(prog="radfm train segmentation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None, metavar="RECIPE.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(run_recipe(load_config(SegRecipe, args.config, args.overrides)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
