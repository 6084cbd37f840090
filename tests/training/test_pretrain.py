"""MAE pretraining (radfm.training): recipe, data stream, augmentations, sources, checkpoints,
resume, CLI, and that the held-out masked-reconstruction loss really drops."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from radfm.errors import ConfigError
from radfm.models import RadFMEncoder
from radfm.preprocess.plan import PreprocessPlan
from radfm.training.augment import AugmentConfig, augment_crop, center_crop, gaussian_blur, random_crop
from radfm.training.checkpoint import flatten_optimizer_state, latest_checkpoint, unflatten_optimizer_state
from radfm.training.cli import load_pretrain_config, main
from radfm.training.pretrain import PretrainStream, heldout_batch, run_pretraining
from radfm.training.sources import TRAIN_SEED_MIN, SourceSpec, build_source, find_package_volumes

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"

# Small and fast: tiny encoder (patch 4), 16^3 crops (64 tokens) of 24^3 phantoms at 4 mm.
FAST = ["data.crop_size=[16,16,16]", "data.sources=[{kind: phantom, shape: [24, 24, 24]}]",
        "data.eval_volumes=2", "data.eval_shape=[24,24,24]", "data.pool_size=4", "batch_size=4",
        "log_every=1", "eval_every=0", "threads=1"]


def cfg_for(tmp_path: Path, *extra: str):
    return load_pretrain_config(TINY, [*FAST, f"output_dir={tmp_path / 'run'}", *extra])


# ----------------------------------------------------------------------------- recipe
def test_shipped_recipes_parse() -> None:
    for name in ("tiny", "starter", "small-gpu"):
        cfg = load_pretrain_config(REPO / "configs" / "pretrain" / f"{name}.yaml")
        assert cfg.steps >= 1 and cfg.data.sources


def test_unknown_keys_and_bad_values_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model\.presett.*Valid keys here"):
        load_pretrain_config(TINY, ["model.presett=tiny"])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.shap"):
        load_pretrain_config(TINY, ["data.sources=[{kind: phantom, shap: [8, 8, 8]}]"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_pretrain_config(TINY, ["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="normalization"):
        load_pretrain_config(TINY, ["data.normalization={CT: hu_window}"])
    with pytest.raises(ConfigError, match=r"folder.*path"):
        load_pretrain_config(TINY, ["data.sources=[{kind: folder}]"])
    with pytest.raises(ConfigError, match="not a multiple of the encoder's patch"):
        run_pretraining(cfg_for(tmp_path, "data.crop_size=[18,16,16]"))


# ----------------------------------------------------------------------------- augmentations
def test_augmentations_are_seeded_and_keep_shapes() -> None:
    vol = torch.linspace(-1, 1, 30 * 28 * 26).reshape(1, 30, 28, 26)
    cfg = AugmentConfig(zoom_p=1.0, flip_lr_p=0.5, intensity_p=1.0, gamma_p=1.0, noise_p=1.0, blur_p=1.0)
    a = augment_crop(vol, (16, 16, 16), cfg, torch.Generator().manual_seed(1))
    b = augment_crop(vol, (16, 16, 16), cfg, torch.Generator().manual_seed(1))
    c = augment_crop(vol, (16, 16, 16), cfg, torch.Generator().manual_seed(2))
    assert a.shape == (1, 16, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a region larger than the volume is padded, then resampled to the crop size
    big = random_crop(vol[:, :8], (16, 16, 16), torch.Generator().manual_seed(0), scale=(1.5, 1.0, 1.0))
    assert big.shape == (1, 16, 16, 16)
    assert center_crop(vol[:, :8], (16, 16, 16)).shape == (1, 16, 16, 16)
    flat = torch.full((1, 12, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)


def test_left_right_flip_is_along_the_last_axis() -> None:
    vol = torch.arange(16.0).reshape(1, 1, 1, 16).expand(1, 16, 16, 16).contiguous()
    cfg = AugmentConfig(zoom_p=0.0, flip_lr_p=1.0, intensity_p=0.0, gamma_p=0.0, noise_p=0.0, blur_p=0.0,
                        min_foreground=0.0)
    out = augment_crop(vol, (16, 16, 16), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, vol.flip(-1))


# ----------------------------------------------------------------------------- sources
def test_package_volumes_too_small_are_skipped_with_a_log_line(caplog) -> None:
    caplog.set_level(logging.INFO, logger="radfm.training.sources")
    found = find_package_volumes(["nibabel:anatomical"], min_size=32)  # real T1, but 25 slices
    assert found == []
    assert "nibabel:anatomical" in caplog.text and "skipped" in caplog.text
    assert [pv.name for pv, _ in find_package_volumes(["nibabel:anatomical"], min_size=16)] == ["nibabel:anatomical"]
    with pytest.raises(ConfigError, match="unknown package"):
        find_package_volumes(["nibabel:nope"])


def test_folder_source_reads_volumes_and_skips_the_rest(tmp_path, caplog) -> None:
    from radfm.data.phantom import make_phantom
    from radfm.io import save_volume

    case = make_phantom(5, modality="CT", shape=(40, 40, 36), spacing=(3.0, 3.0, 3.0))
    save_volume(case.image, tmp_path / "ct.nii.gz")
    save_volume(case.labels, tmp_path / "ct_seg.nii.gz")  # excluded by name
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    caplog.set_level(logging.INFO, logger="radfm.training.sources")
    src = build_source(SourceSpec(kind="folder", path=str(tmp_path)), modality_mix={"CT": 1.0},
                       normalization={"CT": ["ct_window"]}, target_spacing=(4.0, 4.0, 4.0),
                       ct_window=(-1000.0, 1000.0))
    assert len(src) == 2  # ct.nii.gz and broken.nii.gz
    for seed in range(3):
        pv = src.load(np.random.default_rng(seed))
        assert pv.modality == "CT" and pv.tensor.shape == (1, 27, 30, 30)  # (Z, Y, X) at 4 mm
        assert -1.0 <= float(pv.tensor.min()) and float(pv.tensor.max()) <= 1.0
    assert "broken.nii.gz" in caplog.text


def test_missing_real_sources_are_dropped_and_phantoms_still_run(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    cfg = cfg_for(tmp_path, f"data.sources=[{{kind: phantom, shape: [24, 24, 24]}}, "
                            f"{{kind: folder, path: {tmp_path / 'nothing'}}}]")
    stream = PretrainStream(cfg.data, batch_size=2, seed=0, rank=0)
    assert [s.kind for s in stream.sources] == ["phantom"]
    assert "not found" in caplog.text


# ----------------------------------------------------------------------------- the data stream
def test_stream_is_deterministic_per_rank_and_resumable(tmp_path) -> None:
    cfg = cfg_for(tmp_path)
    s0 = PretrainStream(cfg.data, batch_size=3, seed=7, rank=0)
    s0b = PretrainStream(cfg.data, batch_size=3, seed=7, rank=0, start_batch=2)
    s1 = PretrainStream(cfg.data, batch_size=3, seed=7, rank=1)
    it0, it1 = iter(s0), iter(s1)
    batches = [next(it0) for _ in range(3)]
    assert batches[0]["pixel_values"].shape == (3, 1, 16, 16, 16)
    assert set(batches[0]["modality_ids"].tolist()) <= {0, 1}
    assert torch.equal(next(iter(s0b))["pixel_values"], batches[2]["pixel_values"])  # resume = skip ahead
    assert not torch.equal(next(it1)["pixel_values"], batches[0]["pixel_values"])  # ranks differ
    again = PretrainStream(cfg.data, batch_size=3, seed=7, rank=0)
    assert torch.equal(again.make_batch(1)["pixel_values"], batches[1]["pixel_values"])


def test_dataloader_workers_deliver_batches_in_order(tmp_path) -> None:
    from torch.utils.data import DataLoader

    cfg = cfg_for(tmp_path)
    stream = PretrainStream(cfg.data, batch_size=2, seed=0, rank=0, start_batch=3)
    loader = iter(DataLoader(stream, batch_size=None, num_workers=2))
    got = [next(loader) for _ in range(4)]
    assert [b["batch_index"] for b in got] == [3, 4, 5, 6]
    ref = PretrainStream(cfg.data, batch_size=2, seed=0, rank=0)
    assert torch.equal(got[1]["pixel_values"], ref.make_batch(4, lanes=2)["pixel_values"])


def test_heldout_phantoms_are_fixed_and_disjoint_from_training(tmp_path) -> None:
    cfg = cfg_for(tmp_path)
    a, b = heldout_batch(cfg), heldout_batch(cfg)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["modality_ids"].tolist() == [0, 1]
    assert cfg.data.eval_volumes < TRAIN_SEED_MIN  # training phantoms draw seeds >= TRAIN_SEED_MIN


# ----------------------------------------------------------------------------- checkpoints
def test_optimizer_state_round_trips_through_safetensors_layout() -> None:
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95))
    p.grad = torch.randn(3, 2)
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    meta = json.loads(json.dumps(meta))  # what trainer_state.json holds
    restored = unflatten_optimizer_state(tensors, meta)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=5.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95) and opt2.param_groups[0]["lr"] == 1e-3
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_training_code_never_unpickles() -> None:
    for path in (REPO / "radfm" / "training").glob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text and "import pickle" not in text and "torch.save(" not in text, path


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path) -> None:
    """6 steps straight vs 3 steps, stop, resume to 6: same final weights (to 1e-6)."""
    straight = cfg_for(tmp_path / "a", "steps=6", "checkpoint_every=3")
    enc_a = run_pretraining(straight)
    first = cfg_for(tmp_path / "b", "steps=6", "checkpoint_every=3", "stop_at_step=3")
    assert run_pretraining(first).name == "step_00000003"
    assert not (tmp_path / "b" / "run" / "encoder").exists()
    with pytest.raises(ConfigError, match="--resume"):  # never overwrite a run by accident
        run_pretraining(cfg_for(tmp_path / "b", "steps=6", "checkpoint_every=3"))
    enc_b = run_pretraining(cfg_for(tmp_path / "b", "steps=6", "checkpoint_every=3", "resume=true"))
    wa, wb = RadFMEncoder.from_pretrained(enc_a).state_dict(), RadFMEncoder.from_pretrained(enc_b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)
    from safetensors.torch import load_file

    ca = load_file(str(latest_checkpoint(tmp_path / "a" / "run") / "model.safetensors"))
    cb = load_file(str(latest_checkpoint(tmp_path / "b" / "run") / "model.safetensors"))
    for k in ca:  # the decoder too, and the optimizer moments
        torch.testing.assert_close(ca[k], cb[k], rtol=0, atol=1e-6, msg=k)
    losses_a = [r["loss"] for r in map(json.loads, (tmp_path / "a/run/metrics.jsonl").read_text().splitlines())
                if "loss" in r]
    losses_b = [r["loss"] for r in map(json.loads, (tmp_path / "b/run/metrics.jsonl").read_text().splitlines())
                if "loss" in r]
    assert losses_a == pytest.approx(losses_b, abs=1e-5) and len(losses_a) == 6


# ----------------------------------------------------------------------------- CLI and export
def test_cli_runs_a_recipe_and_exports_the_encoder(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(["-c", str(TINY), *FAST, "steps=2", f"output_dir={out}", "eval_every=1"])
    assert rc == 0
    enc_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert enc_dir == out / "encoder"
    for name in ("config.json", "model.safetensors", "preprocess_plan.json"):
        assert (enc_dir / name).is_file(), name
    enc = RadFMEncoder.from_pretrained(enc_dir)
    assert enc.config.hidden_size == 64
    plan = PreprocessPlan.load(enc_dir)
    assert plan.pad_multiple == tuple(enc.config.patch_size) and plan.target_spacing == (4.0, 4.0, 4.0)
    assert (out / "loss_curve.png").is_file() and (out / "pretrain_config.yaml").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "eval_loss" in rows[0]
    assert any("volumes_per_s" in r for r in rows)
    assert main(["-c", str(TINY), "optim.lrr=1"]) == 2  # a user error: message, exit code 2


def test_help_speaks_to_a_radiology_engineer(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for words in ("phantoms", "DICOM", "--resume", "accelerate launch", "key.sub=value", "not a diagnostic"):
        assert words in text, words


# ----------------------------------------------------------------------------- it learns
@pytest.mark.slow
def test_pretraining_lowers_the_heldout_masked_loss(tmp_path) -> None:
    """Tiny encoder, 60 steps of 8 crops (16^3 at 4 mm) from on-the-fly phantoms: the masked-
    reconstruction loss on 4 held-out phantoms (fixed seeds and masks) must end at least 30 %
    below its initial value, and no more than 3 % above the flat-patch baseline (predicting each
    hidden patch flat at its own mean).

    Measured here (seeds 0-3): initial 1.5-2.1 -> about 0.85 (-45 to -60 %), the baseline 0.857.
    What this proves: the loop, loss and optimiser train the model to the level of the trivial
    solution quickly. What it does not: that it predicts structure beyond it - at this scale
    (and for the 600-step starter, 5 % below its baseline) MAE has barely started doing that.
    """
    cfg = cfg_for(tmp_path, "steps=60", "batch_size=8", "data.eval_volumes=4", "log_every=10",
                  "eval_every=60", "optim.lr=2e-3", "optim.warmup_steps=5")
    run_pretraining(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert len(evals) == 2
    first, last = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    assert last <= 0.7 * first, evals
    assert last <= 1.03 * evals[-1]["eval_flat_baseline"], evals


# ----------------------------------------------------------------------------- export and the starter weights
def test_bfloat16_export_is_half_the_size_and_loads_as_float32(tmp_path) -> None:
    from safetensors import safe_open

    from radfm.models import RadFMEncoderConfig
    from radfm.training.pretrain import export_encoder

    torch.manual_seed(0)
    enc = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny")).eval()
    plan = PreprocessPlan(pad_multiple=(4, 4, 4))
    export_encoder(enc, tmp_path / "fp32", plan=plan)
    export_encoder(enc, tmp_path / "bf16", plan=plan, dtype="bfloat16")
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp32", "bf16")}
    assert size["bf16"] < 0.55 * size["fp32"]
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("blocks.0.attn.qkv.weight").dtype == torch.bfloat16
    loaded = RadFMEncoder.from_pretrained(tmp_path / "bf16").eval()
    assert next(loaded.parameters()).dtype == torch.float32
    assert next(enc.parameters()).dtype == torch.float32  # the exported model itself is untouched
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(loaded(x).last_hidden_state, enc(x).last_hidden_state, atol=5e-2, rtol=5e-2)
    assert PreprocessPlan.load(tmp_path / "bf16").pad_multiple == (4, 4, 4)


def test_starter_encoder_ships_small_and_loads() -> None:
    from radfm.starter import load_starter_encoder, starter_encoder_path, starter_preprocess_plan

    path = starter_encoder_path()
    assert (path / "MODEL_CARD.md").is_file()
    assert (path / "model.safetensors").stat().st_size <= 12_000_000  # the budget for the starter encoder
    enc = load_starter_encoder()
    assert next(enc.parameters()).dtype == torch.float32 and not enc.training
    plan = starter_preprocess_plan("CT")
    assert plan.modality == "CT" and plan.pad_multiple == tuple(enc.config.patch_size)
    with torch.no_grad():
        out = enc(torch.zeros(1, 1, *plan.pad_multiple), modality_ids=torch.tensor([0]))
    assert out.last_hidden_state.shape == (1, 1, enc.config.hidden_size) and len(out.feature_pyramid) == 4
