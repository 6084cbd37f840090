"""Report model folders: the starter-encoder reference, the encoder LoRA saved apart, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from radfm.errors import ConfigError, InputError
from radfm.tasks.report.model import (
    ReportModel,
    TinyLMConfig,
    build_report_vlm,
    build_tiny_llm,
    load_report_model,
    save_report_model,
)
from radfm.tasks.report.train import LoraSettings, add_encoder_lora


@pytest.fixture(scope="module")
def starter():
    pytest.importorskip("radfm.starter")
    from radfm.starter import load_starter_encoder, starter_encoder_path, starter_preprocess_plan

    try:
        starter_encoder_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return load_starter_encoder(), starter_preprocess_plan("CT")


def test_model_on_the_starter_encoder_with_encoder_lora_round_trips(starter, tokenizer, tmp_path) -> None:
    enc, plan = starter
    torch.manual_seed(0)
    lm = build_tiny_llm(tokenizer, TinyLMConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64))
    vlm = build_report_vlm(tokenizer, encoder=enc, language_model=lm,
                           bridge_config={"num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2})
    add_encoder_lora(vlm, LoraSettings(r=4, alpha=8, target_modules=["qkv", "fc2"]))
    with torch.no_grad():  # a non-trivial adapter
        for n, p in vlm.encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    vlm.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    ids = torch.tensor([[tokenizer.bos_token_id, *[vlm.config.volume_token_id] * 4, 9, 10]])
    with torch.no_grad():
        before = vlm(ids, pixel_values=x, modality_ids=torch.tensor([0])).logits
    out = save_report_model(ReportModel("vlm", vlm, tokenizer, plan, {}), tmp_path / "m", encoder_ref="radfm.starter")
    meta = json.loads((out / "radfm_report.json").read_text())
    assert meta["encoder"]["source"] == "radfm.starter" and meta["encoder"]["lora"] == "encoder_lora"
    assert (out / "encoder_lora" / "adapter_model.safetensors").is_file()
    # The encoder's weights are not duplicated: the folder is small.
    assert (out / "model.safetensors").stat().st_size < 2_000_000
    back = load_report_model(out)
    with torch.no_grad():
        after = back.model(ids, pixel_values=x, modality_ids=torch.tensor([0])).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # saved through radfm.adapters: the record names the encoder's SHA-256, and a mismatch is refused
    record_file = out / "encoder_lora" / "radfm_adapter.json"
    record = json.loads(record_file.read_text())
    assert record["task"] == "report" and len(record["base_encoder"]["sha256"]) == 64
    record["base_encoder"]["sha256"] = "0" * 64
    record_file.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="trained on encoder"):
        load_report_model(out)

    meta["encoder"]["sha256"] = "0" * 64
    (out / "radfm_report.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="another version of the starter encoder"):
        load_report_model(out)


def test_folders_that_are_not_report_models_are_refused(tmp_path, tiny_text_dir) -> None:
    with pytest.raises(InputError, match="not a radfm report model"):
        load_report_model(tmp_path)
    meta = json.loads((tiny_text_dir / "radfm_report.json").read_text())
    bad = tmp_path / "old"
    bad.mkdir()
    (bad / "radfm_report.json").write_text(json.dumps({**meta, "prompt_version": 0}))
    with pytest.raises(ConfigError, match="prompt format"):
        load_report_model(bad)
