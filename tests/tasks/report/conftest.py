"""Fixtures of the report task: a tiny tokenizer and tiny untrained report models (seconds to build)."""

from __future__ import annotations

import pytest
import torch

import radfm  # noqa: F401  (torchvision shim before transformers)
from radfm.data.phantom import make_phantom
from radfm.data.report_text import render_report


@pytest.fixture(scope="session")
def phantom_texts() -> list[str]:
    """Report and prompt text of a few phantoms (tokenizer training material)."""
    from radfm.tasks.report.prompting import build_prompt, format_target

    texts = []
    for s in range(12):
        c = make_phantom(s, shape=(24, 24, 24), spacing=(8.0, 8.0, 8.0))
        for k in range(3):
            r = render_report(c.findings, seed=k)
            texts += [format_target(r.findings_text, r.impression_text), build_prompt(c.findings)]
    texts += [build_prompt(["Cardiomegaly", "Opacity/lung/base/left"])]
    return texts


@pytest.fixture(scope="session")
def tokenizer(phantom_texts):
    from radfm.tasks.report.tokenizer import train_report_tokenizer

    return train_report_tokenizer(phantom_texts, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory, tokenizer):
    """An untrained image→report model folder (tiny encoder, bridge, LLM) saved the real way."""
    from radfm.models import RadFMEncoder, RadFMEncoderConfig
    from radfm.preprocess.plan import PreprocessPlan
    from radfm.tasks.report.model import (
        ReportModel,
        TinyLMConfig,
        build_report_vlm,
        build_tiny_llm,
        save_report_model,
    )

    torch.manual_seed(0)
    lm = build_tiny_llm(tokenizer, TinyLMConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    enc = RadFMEncoder(RadFMEncoderConfig.from_preset("tiny", num_layers=2, patch_size=(8, 8, 8)))
    vlm = build_report_vlm(tokenizer, encoder=enc, language_model=lm,
                           bridge_config={"num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2})
    plan = PreprocessPlan(modality="CT", target_spacing=(8.0, 8.0, 8.0), normalization="ct_window",
                          pad_multiple=(8, 8, 8))
    out = tmp_path_factory.mktemp("vlm")
    save_report_model(ReportModel("vlm", vlm.eval(), tokenizer, plan, {"task": "test"}), out)
    return out


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory, tokenizer):
    """An untrained text drafter folder."""
    from radfm.tasks.report.model import ReportModel, TinyLMConfig, build_tiny_llm, save_report_model

    lm = build_tiny_llm(tokenizer, TinyLMConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    out = tmp_path_factory.mktemp("text")
    save_report_model(ReportModel("text", lm.eval(), tokenizer, None, {"task": "test"}), out)
    return out
