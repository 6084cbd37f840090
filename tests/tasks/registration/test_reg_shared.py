"""Registration on the shared CNN encoder: LoRA saved apart (peft layout + encoder SHA-256), the
checkpoint without encoder weights, identical fields after save -> load, clear errors on another
encoder, the field depends on the image, and (slow) a short run on phantoms beats the identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from radfm.errors import ConfigError
from radfm.tasks.registration import functional as RF
from radfm.tasks.registration.model import ADAPTER_SUBDIR, RadFMRegistration, save_registration
from radfm.tasks.registration.train import TrainConfig, make_pair, phantom_subjects, prepare_encoder, train

pytest.importorskip("peft")


def _trained(steps: int = 3, **kw) -> tuple[RadFMRegistration, object, dict]:
    """A shared-encoder model after a few LoRA steps on one 32^3 phantom: (base model, peft model, base weights)."""
    torch.manual_seed(0)
    model = RadFMRegistration.from_shared_encoder(**kw)
    base = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cfg = TrainConfig(steps=steps, crop_vox=(32,), lr=1e-2, warmup=1, encoder_mode="lora", lora_r=2, seed=0,
                      progress=False, bf16=False)
    hist = train(model, phantom_subjects(range(1), shape=(32, 32, 32)), cfg)
    return model, hist["model"], base


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    model, peft_model, base = _trained()
    out = tmp_path_factory.mktemp("shared") / "m"
    save_registration(peft_model, out)
    return model, peft_model, base, out


def test_lora_trains_only_adapter_and_decoder(trained_dir) -> None:
    model, _, base, _ = trained_dir
    lora = {k: v for k, v in model.encoder.state_dict().items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B left zero: it trained
    for k, v in model.encoder.state_dict().items():  # the shared encoder's own weights did not move
        if "lora_" not in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    assert any(d.flow.weight.abs().sum() > 0 for d in model.decoders)


def test_adapter_saved_apart_and_checkpoint_has_no_encoder(trained_dir) -> None:
    _, _, _, out = trained_dir
    adapter = out / ADAPTER_SUBDIR
    for name in ("adapter_config.json", "adapter_model.safetensors", "radfm_adapter.json"):
        assert (adapter / name).is_file(), name
    meta = json.loads((adapter / "radfm_adapter.json").read_text())
    assert meta["task"] == "registration" and len(meta["base_encoder"]["sha256"]) == 64
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("encoder.") for k in keys), [k for k in keys if k.startswith("encoder.")][:3]
    assert any(k.startswith("decoders.") for k in keys) and any(k.startswith("proj.") for k in keys)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder_source"] == "shared" and len(cfg["encoder_sha256"]) == 64


def test_round_trip_gives_the_same_field(trained_dir) -> None:
    _, peft_model, _, out = trained_dir
    peft_model.eval()
    x = torch.randn(1, 1, 32, 32, 48)
    y = x.roll(2, dims=2)
    with torch.no_grad():
        expected = peft_model(x, y).ddf
        loaded = RadFMRegistration.from_pretrained(out)  # adapter merged in memory
        assert isinstance(loaded, RadFMRegistration) and not any("lora_" in k for k in loaded.state_dict())
        got = loaded(x, y).ddf
        unmerged = RadFMRegistration.from_pretrained(out, merge_adapter=False).eval()
        assert hasattr(unmerged, "peft_config")
        got_unmerged = unmerged(x, y).ddf
    assert expected.abs().max() > 0.1
    assert torch.allclose(got_unmerged, expected, atol=1e-6), float((got_unmerged - expected).abs().max())
    # merging folds B A into the conv weights: float rounding only (fields of a few voxels)
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


def test_wrong_encoder_sha_is_a_clear_error(trained_dir, tmp_path) -> None:
    import shutil

    _, _, _, out = trained_dir
    bad = tmp_path / "bad_adapter"
    shutil.copytree(out, bad)
    meta_file = bad / ADAPTER_SUBDIR / "radfm_adapter.json"
    meta = json.loads(meta_file.read_text())
    meta["base_encoder"]["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="trained on encoder 000000000000"):
        RadFMRegistration.from_pretrained(bad)
    bad2 = tmp_path / "bad_config"
    shutil.copytree(out, bad2)
    cfg = json.loads((bad2 / "config.json").read_text())
    cfg["encoder_sha256"] = "f" * 64
    (bad2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="another shared encoder"):
        RadFMRegistration.from_pretrained(bad2)


def test_export_merged_is_self_contained(trained_dir, tmp_path) -> None:
    _, _, _, out = trained_dir
    loaded = RadFMRegistration.from_pretrained(out)
    loaded.export_merged(tmp_path / "export")
    assert not (tmp_path / "export" / ADAPTER_SUBDIR).exists()
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:
        assert any(k.startswith("encoder.trunk.") for k in f.keys())
    exported = RadFMRegistration.from_pretrained(tmp_path / "export").eval()
    assert exported.config.encoder_source is None
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x, x.roll(1, dims=3)).ddf, loaded(x, x.roll(1, dims=3)).ddf, atol=1e-6)


def test_shared_encoder_refuses_full_training_and_vit_refuses_lora() -> None:
    from regtest_utils import tiny_config

    with pytest.raises(ConfigError, match="cannot be trained in full"):
        prepare_encoder(RadFMRegistration.from_shared_encoder(), TrainConfig(encoder_mode="full"))
    with pytest.raises(ConfigError, match="needs the shared CNN encoder"):
        prepare_encoder(RadFMRegistration(tiny_config()), TrainConfig(encoder_mode="lora"))


def test_diffeomorphic_option_on_the_shared_encoder() -> None:
    model = RadFMRegistration.from_shared_encoder(diffeomorphic=True).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for dec in model.decoders:
            dec.flow.weight.copy_(torch.randn(dec.flow.weight.shape, generator=g) * 1e-3)
        out = model(torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32))
    assert out.svf is not None and out.ddf.abs().max() > 0
    assert float(RF.jacobian_determinant(out.ddf).min()) > 0


@pytest.mark.slow
def test_short_lora_run_on_phantoms_beats_identity_and_depends_on_the_image() -> None:
    """300 steps on 4 phantoms (passed in 452 s on the shared 2-core CPU): the warped moving image is closer to
    the fixed one than without registration, on held-out phantom pairs, and noise gives another field."""
    torch.manual_seed(0)
    model = RadFMRegistration.from_shared_encoder()
    cfg = TrainConfig(steps=300, crop_vox=(32, 48), lr=2e-3, warmup=20, encoder_mode="lora", lora_r=8, seed=0,
                      progress=False, w_sim=0.05, w_dice=0.05)
    hist = train(model, phantom_subjects(range(4), shape=(64, 64, 64)), cfg)
    net = hist["model"].eval()
    assert np.mean(hist["epe_vox"][-50:]) < np.mean(hist["epe_vox"][:50])
    rng = np.random.default_rng(777)
    eval_cfg = TrainConfig(crop_vox=(48,), max_displacement_mm=(6.0, 8.0))
    before, after, noise_diff = [], [], []
    for subject in phantom_subjects(range(100, 103), shape=(64, 64, 64)):
        b = make_pair(subject, rng, eval_cfg)
        with torch.no_grad():
            u = net(b["fixed"], b["moving"]).ddf
            u_noise = net(torch.randn_like(b["fixed"]), torch.randn_like(b["moving"])).ddf
        before.append(float((b["moving"] - b["fixed"]).abs().mean()))
        after.append(float((RF.warp(b["moving"], u) - b["fixed"]).abs().mean()))
        noise_diff.append(float((u - u_noise).abs().mean()))
    assert np.mean(after) < 0.95 * np.mean(before), (before, after)
    assert np.mean(noise_diff) > 0.1, noise_diff  # voxels: the field follows the images
