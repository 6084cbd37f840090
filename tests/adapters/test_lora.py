"""LoRA adapters: on the dense segmentation model (save/load, several at once, switching, merging) and encoder-only adapters on any task model."""

from __future__ import annotations

import json

import pytest
import torch

import radfm  # noqa: F401  (torchvision shim before peft)
from radfm.adapters.lora import (
    LoraSpec,
    add_adapter,
    attach_lora,
    encoder_sha256,
    load_adapters,
    merge,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
    use_adapter,
)
from radfm.errors import ConfigError, InputError
from radfm.models import RadFMEncoder, RadFMEncoderConfig
from radfm.preprocess.plan import PreprocessPlan
from radfm.tasks.dense_segmentation.model import RadFMDenseSegmentationConfig, RadFMForDenseSegmentation

X = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def encoder() -> RadFMEncoder:
    torch.manual_seed(0)
    return RadFMEncoder(RadFMEncoderConfig.from_preset("tiny")).eval()


def base_model(encoder: RadFMEncoder, num_classes: int = 3) -> RadFMForDenseSegmentation:
    torch.manual_seed(1)
    return RadFMForDenseSegmentation.from_encoder(encoder, num_classes)


def train_a_little(model: torch.nn.Module, seed: int, steps: int = 3) -> None:
    """A few real optimiser steps toward a random target (the adapter must move away from B = 0)."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(X).logits
        target = torch.randint(0, logits.shape[1], (1, *logits.shape[2:]))
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's own weights (peft's base_layer names folded back), LoRA factors left out."""
    enc = model.get_base_model().encoder if hasattr(model, "get_base_model") else model.encoder
    return {k.replace(".base_layer", ""): v.clone() for k, v in enc.state_dict().items() if "lora_" not in k}


def test_save_load_round_trip_and_layout(encoder, tmp_path) -> None:
    pm = attach_lora(base_model(encoder), "liver", LoraSpec(r=4))
    train_a_little(pm, seed=0)
    y = pm(X).logits
    save_adapter(pm, "liver", tmp_path / "liver", plan=PreprocessPlan(modality="CT"),
                 label_names={0: "background", 1: "liver", 2: "spleen"}, base_encoder_path="/enc")
    files = sorted(p.name for p in (tmp_path / "liver").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "preprocess_plan.json",
                     "radfm_adapter.json"]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    meta = read_adapter_meta(tmp_path / "liver")
    assert meta["task"] == "segmentation" and meta["num_classes"] == 3
    assert meta["label_names"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert meta["base_encoder"] == {**meta["base_encoder"], "path": "/enc", "sha256": encoder_sha256(encoder)}
    # The adapter is saved apart: no encoder weight is in the adapter file.
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "liver" / "adapter_model.safetensors"))
    assert all("lora_" in k or ".head." in f".{k}" for k in keys), sorted(keys)[:5]

    loaded = load_adapters(base_model(encoder), {"liver": tmp_path / "liver"})
    assert torch.equal(loaded(X).logits, y)
    assert trainable_parameters(loaded)["trainable"] == 0  # loaded for inference


def test_two_adapters_at_once_match_each_alone_and_switch_exactly(encoder, tmp_path) -> None:
    outs = {}
    for name, spec, k, seed in [("liver", LoraSpec(r=4), 3, 0), ("brain", LoraSpec(r=2, dropout=0.1), 5, 1)]:
        pm = attach_lora(base_model(encoder, k), name, spec)
        train_a_little(pm, seed=seed)
        outs[name] = pm(X).logits
        save_adapter(pm, name, tmp_path / name)
    assert outs["brain"].shape[1] == 5 and outs["liver"].shape[1] == 3

    both = load_adapters(base_model(encoder, 3), {"liver": tmp_path / "liver", "brain": tmp_path / "brain"})
    assert both.active_adapter == "liver"
    for _ in range(2):  # back and forth, exact every time
        for name in ("brain", "liver"):
            use_adapter(both, name)
            assert torch.equal(both(X).logits, outs[name]), name
    with pytest.raises(InputError, match="no adapter named"):
        use_adapter(both, "lung")


def test_merged_model_matches_the_adapter(encoder, tmp_path) -> None:
    pm = attach_lora(base_model(encoder), "liver", LoraSpec(r=4, include_patch_embed=True, include_pyramid=True))
    train_a_little(pm, seed=0)
    add_adapter(pm, "other", LoraSpec(r=2), num_classes=4)
    train_a_little(pm, seed=1)
    ys = {}
    for name in ("liver", "other"):
        use_adapter(pm, name)
        ys[name] = pm(X).logits
    for name, k in (("liver", 3), ("other", 4)):
        merged = merge(pm, name)
        assert type(merged) is RadFMForDenseSegmentation and merged.config.num_classes == k
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(X).logits, ys[name], atol=1e-5, rtol=1e-5)
    use_adapter(pm, "liver")  # merging worked on copies: the adapters still run
    assert torch.equal(pm(X).logits, ys["liver"])
    merged.save_pretrained(tmp_path / "export")  # exports as a plain model
    reloaded = RadFMForDenseSegmentation.from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(reloaded(X).logits, ys["other"], atol=1e-5, rtol=1e-5)


def test_lora_on_the_patch_embedding_conv3d(encoder, tmp_path) -> None:
    from peft.tuners.lora.layer import Conv3d as LoraConv3d

    pm = attach_lora(base_model(encoder), "ct", LoraSpec(r=4, targets=(), include_patch_embed=True))
    proj = pm.get_base_model().encoder.patch_embed.proj
    assert isinstance(proj, LoraConv3d)
    pm.train()
    pm(X).logits.square().mean().backward()
    assert proj.lora_B["ct"].weight.grad.abs().sum() > 0  # B starts at 0, so A's gradient is 0 at first
    train_a_little(pm, seed=2)
    y = pm(X).logits
    save_adapter(pm, "ct", tmp_path / "ct")
    assert "patch_embed.proj" in json.loads((tmp_path / "ct" / "adapter_config.json").read_text())["target_modules"]
    assert torch.equal(load_adapters(base_model(encoder), {"ct": tmp_path / "ct"})(X).logits, y)


def test_trainable_share_of_the_small_preset_is_below_five_percent() -> None:
    config = RadFMDenseSegmentationConfig(encoder_config=RadFMEncoderConfig.from_preset("small"), num_classes=4)
    with torch.device("meta"):  # shapes only: counting does not need values
        model = RadFMForDenseSegmentation(config)
    pm = attach_lora(model, "task", LoraSpec(r=8))
    counts = trainable_parameters(pm)
    assert 20e6 < counts["total"] < 30e6
    assert 0 < counts["percent"] < 5.0, counts
    assert counts["percent"] == pytest.approx(100 * counts["trainable"] / counts["total"])


def test_training_an_adapter_leaves_the_base_encoder_untouched(encoder) -> None:
    model = base_model(encoder)
    before = base_weights(model)
    pm = attach_lora(model, "liver", LoraSpec(r=4, include_patch_embed=True, include_pyramid=True))
    assert all(not p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n and ".head." not in n)
    train_a_little(pm, seed=0, steps=5)
    after = base_weights(pm)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert encoder_sha256(pm) == encoder_sha256(encoder)


def test_linear_probe_trains_the_head_only(encoder) -> None:
    pm = attach_lora(base_model(encoder), "probe", LoraSpec(targets=()))
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert names and all(".head.modules_to_save.probe." in n for n in names)
    head = sum(p.numel() for p in pm.get_base_model().head.modules_to_save["probe"].parameters())
    assert trainable_parameters(pm)["trainable"] == head


def test_an_adapter_is_refused_on_another_encoder(encoder, tmp_path) -> None:
    pm = attach_lora(base_model(encoder), "liver", LoraSpec(r=2))
    save_adapter(pm, "liver", tmp_path / "liver")
    torch.manual_seed(5)
    other = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny"))
    with pytest.raises(ConfigError, match="was trained on encoder"):
        load_adapters(base_model(other), {"liver": tmp_path / "liver"})
    with pytest.raises(InputError, match="not a radfm adapter"):
        load_adapters(base_model(encoder), {"x": tmp_path})


class _PooledClassifier(torch.nn.Module):
    """Any task model with a shared ``encoder`` and its own head (here: a pooled linear classifier)."""

    def __init__(self, encoder: RadFMEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x).last_hidden_state.mean(1))


def test_encoder_only_adapter_on_any_task_model(encoder, tmp_path) -> None:
    """attach → train → save apart → load (merged) reproduces the outputs; another encoder is refused."""
    import copy

    from radfm.adapters.lora import attach_encoder_lora, load_encoder_adapter, save_encoder_adapter

    torch.manual_seed(3)
    model = _PooledClassifier(copy.deepcopy(encoder))
    head_state = copy.deepcopy(model.classifier.state_dict())
    pm = attach_encoder_lora(model, LoraSpec(r=4, alpha=8), trainable_modules=("classifier",))
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("encoder" in n and "lora_" not in n for n in trainable)  # encoder weights frozen
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = pm(X).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.eval()
    with torch.no_grad():
        expected = pm(X)
    save_encoder_adapter(pm, tmp_path / "a", task="classification", base_encoder="/enc")
    meta = read_adapter_meta(tmp_path / "a")
    assert meta["task"] == "classification" and meta["lora"]["r"] == 4
    assert meta["base_encoder"]["sha256"] == encoder_sha256(encoder)

    fresh = _PooledClassifier(copy.deepcopy(encoder))
    fresh.classifier.load_state_dict(pm.get_base_model().classifier.state_dict())
    assert not torch.equal(fresh.classifier.weight, head_state["weight"])  # the head trained too
    merged = load_encoder_adapter(fresh, tmp_path / "a")
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # plain modules again
    with torch.no_grad():
        assert torch.allclose(merged(X), expected, atol=1e-5)
    torch.manual_seed(9)
    other = _PooledClassifier(RadFMEncoder(RadFMEncoderConfig.from_preset("tiny")))
    with pytest.raises(ConfigError, match="trained on encoder"):
        load_encoder_adapter(other, tmp_path / "a")


def test_injected_lora_merges_into_plain_layers_with_the_same_outputs(encoder) -> None:
    """inject (in place, pyramid Conv3d included) → train → merge: plain modules, identical outputs."""
    import copy

    from radfm.adapters.lora import inject_encoder_lora, merge_injected_lora

    model = _PooledClassifier(copy.deepcopy(encoder))
    before = {n: type(m) for n, m in model.encoder.named_modules()}
    enc = inject_encoder_lora(model, LoraSpec(r=4, alpha=8, include_pyramid=True))
    assert all(p.requires_grad == ("lora_" in n) for n, p in enc.named_parameters())
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        expected = enc(X).feature_pyramid[0]
        assert not torch.allclose(expected, encoder(X).feature_pyramid[0], atol=1e-4)  # LoRA changes the output
    assert merge_injected_lora(model.encoder) > 4
    assert {n: type(m) for n, m in model.encoder.named_modules()} == before  # plain layers again
    with torch.no_grad():
        assert torch.allclose(model.encoder(X).feature_pyramid[0], expected, atol=1e-5)
