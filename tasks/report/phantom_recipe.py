"""The image→report recipe on SIMULATED phantoms: data, the three stages, and evaluation.

Why phantoms: no real 3D image with a paired report is available to this project (see
../shared/data/MANIFEST.md), while the phantom generator gives volumes whose findings — and a
report rendered from exactly those findings — are known. The recipe therefore tests the
*mechanics* of image→report drafting (does the model state the findings present?), not
clinical quality; its model card says so.

Recipe: generate ``n_train`` phantoms (+ ``n_val`` held out, other seeds); train a BPE on their
reports; stage 0 teaches a small from-scratch LLM the report language conditioned on the
findings in the prompt (several wordings per case); stage 1 aligns the bridge (LLM and encoder
frozen, encoder tokens cached); stage 2 trains LoRA on the LLM + the bridge on a mix of
image-only, image+findings and findings-only prompts. Evaluation drafts each held-out case from
the image alone (and from the ground-truth findings) and scores finding-level P/R/F1 with
:func:`radfm.tasks.report.drafting.mentioned_findings`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import radfm  # noqa: F401  (torchvision shim before transformers / peft)
from radfm.data.phantom import ABNORMALITIES, PhantomCase, make_phantom
from radfm.data.report_text import TORSO_ORGANS, render_report
from radfm.errors import ConfigError
from radfm.metrics import set_prf
from radfm.models.encoder import RadFMEncoder
from radfm.models.encoder_config import MODALITY_IDS, RadFMEncoderConfig
from radfm.models.radfm_config import RadFMBridgeConfig
from radfm.preprocess.plan import PreprocessPlan, apply_plan
from radfm.tasks.report.drafting import mentioned_findings
from radfm.tasks.report.model import (
    ReportModel,
    TinyLMConfig,
    build_report_vlm,
    build_tiny_llm,
    save_report_model,
)
from radfm.tasks.report.prompting import build_prompt, collate, encode_example, format_target, parse_report
from radfm.tasks.report.tokenizer import train_report_tokenizer
from radfm.tasks.report.train import (
    LoraSettings,
    OptimConfig,
    TrainExample,
    VolumeFeatureCache,
    add_encoder_lora,
    merge_lora,
    train_bridge,
    train_language_model,
    train_lora,
)

__all__ = ["PhantomReportConfig", "evaluate_phantom_model", "make_cases", "train_phantom_report_model"]

log = logging.getLogger(__name__)


@dataclass
class PhantomReportConfig:
    """Recipe of the phantom image→report model (``radfm train report --phantoms N``).

    Attributes:
        n_train, n_val: phantoms for training and held out (disjoint seeds).
        seed: base seed (train cases use ``seed + i``, held-out ``seed + 10**6 + i``).
        shape, spacing: phantom grid (canonical X, Y, Z) and mm per voxel.
        modality: "CT" or "MR".
        max_lesions: at most this many random lesions per case (``None``: the generator's 0-3).
        abnormality_p: probability of each organ state (cardiomegaly, hepatomegaly, pleural
            effusion) per case; ``None``: the generator's own (~0.15 each).
        encoder: "starter" (the shipped pretrained encoder), "tiny" (random init, for tests) or
            a RadFM encoder folder.
        train_encoder: let stages 1-2 update the whole encoder (needed for a random one).
        encoder_lora: LoRA on the (shared, pretrained) encoder in stages 1-2 instead; saved apart
            as a peft adapter beside the report model (``None``: encoder frozen).
        plan_spacing: model input spacing (mm); ``None``: the phantom spacing.
        vocab_size, llm: the from-scratch LLM and its tokenizer.
        bridge: resampler settings (``num_queries`` = volume tokens in the prompt).
        rewordings: extra wordings of each case's report for stage 0 (text augmentation).
        report_organs: organs whose normal statements the training reports carry (``None``: the
            phantom's own report, every torso organ); fewer organs = shorter targets, where the
            finding sentences weigh more (the learning test uses this).
        stage0, stage1, stage2: optimisation per stage; ``lora``: stage-2 adapters.
        mix: fractions of stage-2 prompts that are image-only, image+findings, findings-only.
        bf16_features: compute cached encoder tokens under bf16 autocast.
    """

    n_train: int = 400
    n_val: int = 50
    seed: int = 1000
    shape: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    modality: str = "CT"
    max_lesions: int | None = None
    abnormality_p: float | None = None
    encoder: str = "starter"
    train_encoder: bool = False
    encoder_lora: LoraSettings | None = None
    plan_spacing: float | None = None
    vocab_size: int = 1024
    llm: TinyLMConfig = field(default_factory=lambda: TinyLMConfig(hidden_size=128, num_layers=2, num_heads=2,
                                                                  intermediate_size=384))
    bridge: dict[str, Any] = field(default_factory=lambda: {"num_queries": 16, "hidden_size": 128,
                                                            "num_layers": 2, "num_heads": 4})
    rewordings: int = 4
    report_organs: tuple[str, ...] | None = None
    stage0: OptimConfig = field(default_factory=lambda: OptimConfig(steps=600, batch_size=32, lr=3e-3,
                                                                    warmup_steps=50))
    stage1: OptimConfig = field(default_factory=lambda: OptimConfig(steps=500, batch_size=32, lr=1e-3,
                                                                    warmup_steps=50))
    stage2: OptimConfig = field(default_factory=lambda: OptimConfig(steps=500, batch_size=32, lr=1e-3,
                                                                    warmup_steps=50))
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=8, alpha=16))
    mix: tuple[float, float, float] = (0.6, 0.2, 0.2)
    bf16_features: bool = True


def make_cases(cfg: PhantomReportConfig, *, held_out: bool = False) -> list[PhantomCase]:
    """The recipe's phantoms (deterministic in ``cfg.seed``); held-out ones use other seeds."""
    n = cfg.n_val if held_out else cfg.n_train
    base = cfg.seed + (10**6 if held_out else 0)
    cases = []
    for i in range(n):
        s = base + i
        rng = np.random.default_rng(s + 7)
        n_les = None if cfg.max_lesions is None else int(rng.integers(0, cfg.max_lesions + 1))
        abn = None
        if cfg.abnormality_p is not None:
            abn = [a for a in ABNORMALITIES if rng.random() < cfg.abnormality_p]
        cases.append(make_phantom(s, modality=cfg.modality, shape=cfg.shape, spacing=cfg.spacing,  # type: ignore[arg-type]
                                  n_lesions=n_les, abnormalities=abn))
    return cases


def _encoder_and_plan(cfg: PhantomReportConfig) -> tuple[RadFMEncoder, PreprocessPlan, str]:
    spacing = tuple(float(cfg.plan_spacing or s) for s in (cfg.spacing if cfg.plan_spacing is None
                                                          else (cfg.plan_spacing,) * 3))
    if cfg.encoder == "starter":
        from radfm.starter import load_starter_encoder, starter_encoder_path, starter_preprocess_plan

        enc = load_starter_encoder()
        plan = replace(starter_preprocess_plan(cfg.modality), target_spacing=spacing)  # type: ignore[arg-type]
        ref = "radfm.starter"
        _ = starter_encoder_path()
    elif cfg.encoder == "tiny":
        torch.manual_seed(cfg.seed)
        enc = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", patch_size=(8, 8, 8), num_layers=2))
        plan = PreprocessPlan(modality=cfg.modality, target_spacing=spacing, normalization="ct_window"
                              if cfg.modality == "CT" else "percentile")  # type: ignore[arg-type]
        ref = "tiny (random init)"
    else:
        enc = RadFMEncoder.from_pretrained(cfg.encoder)
        plan = PreprocessPlan.load(cfg.encoder) if (Path(cfg.encoder) / "preprocess_plan.json").is_file() \
            else PreprocessPlan(modality=cfg.modality)
        plan = replace(plan, target_spacing=spacing)  # type: ignore[arg-type]
        ref = str(cfg.encoder)
    plan = replace(plan, pad_multiple=tuple(enc.config.patch_size), patch_size=tuple(cfg.shape))  # type: ignore[arg-type]
    return enc.float(), plan, ref


def _volume_tensors(cases: Sequence[PhantomCase], plan: PreprocessPlan) -> list[torch.Tensor]:
    return [apply_plan(c.image, plan).tensor for c in cases]


def _target(case: PhantomCase, cfg: PhantomReportConfig) -> tuple[str, str]:
    """(findings, impression) a case is trained to produce: its own report, or one re-rendered for fewer organs."""
    if cfg.report_organs is None:
        return case.report.findings_text, case.report.impression_text
    r = render_report(case.findings, seed=case.seed, organs_examined=tuple(cfg.report_organs),
                      modality=case.image.modality)
    return r.findings_text, r.impression_text


def _examples(cases: Sequence[PhantomCase], tokenizer: Any, q: int, mix: tuple[float, float, float],
              seed: int, targets: Sequence[tuple[str, str]]) -> list[TrainExample]:
    """Stage-2 examples: each case once, its prompt kind drawn with probabilities ``mix``."""
    rng = np.random.default_rng(seed)
    out = []
    for i, c in enumerate(cases):
        kind = int(rng.choice(3, p=np.asarray(mix) / sum(mix)))
        findings = None if kind == 0 else c.findings
        vol = None if kind == 2 else i
        prompt = build_prompt(findings, num_volume_tokens=q if vol is not None else 0)
        target = format_target(*targets[i])
        out.append(TrainExample(encode_example(tokenizer, prompt, target), vol))
    return out


def train_phantom_report_model(cfg: PhantomReportConfig | None = None, out_dir: str | Path | None = None, *,
                               progress: bool = True, cases: Sequence[PhantomCase] | None = None) -> ReportModel:
    """Run the whole recipe; save to ``out_dir`` when given. Returns the trained model (eval mode)."""
    cfg = cfg or PhantomReportConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    cases = list(cases) if cases is not None else make_cases(cfg)
    if not cases:
        raise ConfigError("the phantom recipe needs at least one training case.")
    log.info("phantom report recipe: %d training phantoms ready in %.0f s", len(cases), time.perf_counter() - t0)
    encoder, plan, encoder_ref = _encoder_and_plan(cfg)

    # Tokenizer: every wording the generator can produce for these cases, and the prompts.
    texts, stage0 = [], []
    wordings: list[list[tuple[str, str]]] = []
    organs = tuple(cfg.report_organs) if cfg.report_organs is not None else TORSO_ORGANS
    for i, c in enumerate(cases):
        ws = [_target(c, cfg)]
        for k in range(cfg.rewordings):
            r = render_report(c.findings, seed=cfg.seed * 7919 + i * 31 + k, organs_examined=organs,
                              modality=c.image.modality)
            ws.append((r.findings_text, r.impression_text))
        wordings.append(ws)
        texts += [format_target(f, m) for f, m in ws] + [build_prompt(c.findings)]
    tokenizer = train_report_tokenizer(texts, vocab_size=cfg.vocab_size)
    for c, ws in zip(cases, wordings):
        for f, m in ws:
            stage0.append(encode_example(tokenizer, build_prompt(c.findings), format_target(f, m)))

    lm = build_tiny_llm(tokenizer, cfg.llm, seed=cfg.seed)
    losses = {"stage0": train_language_model(lm, stage0, cfg.stage0, pad_id=tokenizer.pad_token_id,
                                             progress=progress, desc="stage 0: LLM")}
    torch.manual_seed(cfg.seed)
    vlm = build_report_vlm(tokenizer, encoder=encoder, language_model=lm,
                           bridge_config=RadFMBridgeConfig(**cfg.bridge))
    q = vlm.config.num_volume_tokens
    if cfg.encoder_lora is not None:
        add_encoder_lora(vlm, cfg.encoder_lora)
    volumes = _volume_tensors(cases, plan)
    mids = [MODALITY_IDS.get(c.image.modality, 2) for c in cases] if encoder.config.modality_embedding else None
    s1 = [TrainExample(encode_example(tokenizer, build_prompt(None, num_volume_tokens=q), format_target(*_target(c, cfg))),
                       i) for i, c in enumerate(cases)]
    features = None
    if not cfg.train_encoder and cfg.encoder_lora is None:  # frozen encoder: its tokens once, for both stages
        features = VolumeFeatureCache(vlm.encoder, volumes, mids, cfg.bf16_features)
    losses["stage1"] = train_bridge(vlm, s1, volumes, cfg.stage1, pad_id=tokenizer.pad_token_id,
                                    train_encoder=cfg.train_encoder, modality_ids=mids, progress=progress,
                                    features_bf16=cfg.bf16_features, features=features)
    s2 = _examples(cases, tokenizer, q, cfg.mix, cfg.seed, [_target(c, cfg) for c in cases])
    losses["stage2"] = train_lora(vlm, s2, volumes, cfg.stage2, pad_id=tokenizer.pad_token_id, lora=cfg.lora,
                                  train_encoder=cfg.train_encoder, modality_ids=mids, progress=progress,
                                  features_bf16=cfg.bf16_features, features=features)
    merge_lora(vlm)
    vlm.eval()
    meta = {
        "task": "image→report drafting (SIMULATED phantom training data)",
        "encoder": encoder_ref,
        "n_train": len(cases),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
        "final_loss": {k: round(float(np.mean(v[-20:])), 4) for k, v in losses.items()},
        "recipe": {"shape": list(cfg.shape), "spacing": list(cfg.spacing), "modality": cfg.modality,
                   "train_encoder": cfg.train_encoder, "encoder_lora": cfg.encoder_lora is not None, "steps": [cfg.stage0.steps, cfg.stage1.steps,
                                                                 cfg.stage2.steps]},
    }
    rm = ReportModel("vlm", vlm, tokenizer, plan, meta)
    if out_dir is not None:
        save_report_model(rm, out_dir, encoder_ref="radfm.starter" if cfg.encoder == "starter" else None)
        rm.path = Path(out_dir)
    return rm


@torch.no_grad()
def _generate_batch(rm: ReportModel, cases: Sequence[PhantomCase], *, with_image: bool, with_findings: bool,
                    max_new_tokens: int, batch_size: int = 16) -> list[str]:
    tok = rm.tokenizer
    q = rm.num_volume_tokens
    texts: list[str] = []
    for s in range(0, len(cases), batch_size):
        chunk = cases[s:s + batch_size]
        enc = [encode_example(tok, build_prompt(c.findings if with_findings else None,
                                                num_volume_tokens=q if with_image else 0)) for c in chunk]
        batch = collate(enc, tok.pad_token_id, left_pad=True)
        pix = mids = None
        if with_image:
            pix = torch.stack([apply_plan(c.image, rm.plan).tensor for c in chunk])  # type: ignore[arg-type]
            if rm.model.config.vision_config.modality_embedding:
                mids = torch.tensor([MODALITY_IDS.get(c.image.modality, 2) for c in chunk])
        ids = rm.model.generate(batch["input_ids"], pixel_values=pix, modality_ids=mids,
                                attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        texts += ["FINDINGS: {} IMPRESSION: {}".format(*parse_report(tok.decode(r, skip_special_tokens=True)))
                  for r in ids]
    return texts


def evaluate_phantom_model(rm: ReportModel, cases: Sequence[PhantomCase], *, max_new_tokens: int = 160,
                           variants: Sequence[str] = ("image", "image+findings", "findings")) -> dict[str, Any]:
    """Finding-level P/R/F1 of drafts vs ground truth for each prompt variant.

    The unit is a ``(finding, organ)`` pair (see ``mentioned_findings``); ground truth is the
    set of the case's findings. Also reports the reference reports' own score (1.0 when the
    matcher reads the renderer's text correctly) and a majority baseline (always stating the
    most frequent training finding).
    """
    gold = [{(f.finding, f.organ) for f in c.findings} for c in cases]
    out: dict[str, Any] = {"n": len(cases)}
    for v in variants:
        texts = _generate_batch(rm, cases, with_image="image" in v, with_findings="findings" in v,
                                max_new_tokens=max_new_tokens)
        out[v] = set_prf(gold, [mentioned_findings(t) for t in texts])
        out[v]["examples"] = texts[:3]
    out["reference"] = set_prf(gold, [mentioned_findings(c.report.text) for c in cases])
    out["none"] = set_prf(gold, [set() for _ in cases])
    return out


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file (recorded for the encoder a report model was trained on)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
