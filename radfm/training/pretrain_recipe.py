"""The pretraining recipe (``configs/pretrain/*.yaml``): model, data and optimiser dataclasses,
and what the recipe builds (the MAE model, the preprocessing plan, the exported encoder).

Why apart from the loop: commands, docs and other tasks (``export_encoder``) read the recipe
without importing the training loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from radfm.errors import ConfigError
from radfm.models.encoder_config import RadFMEncoderConfig
from radfm.models.mae import (
    RadFMForMaskedVolumeModeling,
    RadFMMAEConfig,
)
from radfm.preprocess.plan import PreprocessPlan
from radfm.training.augment import AugmentConfig
from radfm.training.sources import SourceSpec


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


def normalization_lists(data: DataConfig) -> dict[str, list[str]]:
    """``data.normalization`` with every value as a list of methods."""
    return {k: [v] if isinstance(v, str) else list(v) for k, v in data.normalization.items()}


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


