"""LoRA on the report LLM (radfm.adapters over peft): trainable parts, save apart, load back, merge."""

from __future__ import annotations

import json

import pytest
import torch

from radfm.adapters import LoraSpec, attach_llm_lora, save_llm_adapter
from radfm.errors import ConfigError
from radfm.tasks.report.model import load_report_model
from radfm.tasks.report.train import LoraSettings, add_lora, merge_lora


def test_lora_adapter_saves_and_loads_with_identical_logits(tiny_vlm_dir, tmp_path) -> None:
    from peft import PeftModel

    rm = load_report_model(tiny_vlm_dir)
    vlm = rm.model
    add_lora(vlm, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in vlm.language_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-trivial (peft starts B at zero)
        for n, p in vlm.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    ids = torch.tensor([[rm.tokenizer.bos_token_id, 9, 10, 11]])
    with torch.no_grad():
        before = vlm(ids).logits
    save_llm_adapter(vlm.language_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4  # the layout vLLM / PeftModel read
    record = json.loads((tmp_path / "adapter" / "radfm_adapter.json").read_text())
    assert record["task"] == "report" and record["lora"]["r"] == 4 and "base_llm" in record

    fresh = load_report_model(tiny_vlm_dir).model
    with torch.no_grad():
        assert not torch.allclose(fresh(ids).logits, before)
    fresh.language_model = PeftModel.from_pretrained(fresh.language_model, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, before)
        merge_lora(fresh)
        torch.testing.assert_close(fresh(ids).logits, before, atol=1e-5, rtol=1e-5)
    assert not hasattr(fresh.language_model, "peft_config")


def test_llm_lora_refuses_targets_the_llm_does_not_have(tiny_vlm_dir) -> None:
    lm = load_report_model(tiny_vlm_dir).model.language_model
    with pytest.raises(ConfigError, match="none of the LoRA targets"):
        attach_llm_lora(lm, LoraSpec(r=2, targets=("c_attn", "c_fc")))
