"""A byte-level BPE tokenizer trained on report text, for report LLMs trained from scratch.

Why our own tokenizer: a tiny from-scratch LLM (the text drafter, the phantom starter model)
wastes most of its capacity on a 32k–150k general vocabulary; a BPE of a few thousand pieces
learned on the reports themselves keeps sequences short and the embedding table small. Byte
level means no unknown characters and exact decoding. A pretrained LLM keeps its own tokenizer
instead; :func:`add_report_tokens` adds the same special tokens to it.

Special tokens: ``<s>``, ``</s>``, ``<pad>``, ``<unk>``, the volume placeholder ``<volume>``,
and the chat-ish markers ``<|prompt|>`` / ``<|report|>`` (start of the instruction / of the
answer). The section headers ``FINDINGS:`` and ``IMPRESSION:`` are added as *non-special* atomic
tokens: one id each, and kept by ``decode(skip_special_tokens=True)`` so drafts can be split.
"""

from __future__ import annotations

from collections.abc import Iterable

import radfm  # noqa: F401  (torchvision shim before transformers)
from radfm.errors import ConfigError
from radfm.models.radfm_config import DEFAULT_VOLUME_TOKEN

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "PROMPT_TOKEN",
    "REPORT_TOKEN",
    "SECTION_TOKENS",
    "UNK",
    "VOLUME_TOKEN",
    "add_report_tokens",
    "train_report_tokenizer",
]

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
VOLUME_TOKEN = DEFAULT_VOLUME_TOKEN
PROMPT_TOKEN, REPORT_TOKEN = "<|prompt|>", "<|report|>"
SECTION_TOKENS: tuple[str, str] = ("FINDINGS:", "IMPRESSION:")


def train_report_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2) -> object:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        texts: report text and prompt text (label strings) — everything the model will see.
        vocab_size: total size including the 256 byte symbols and the special tokens.
        min_frequency: merges seen fewer times are not learned.
    Returns:
        A ``PreTrainedTokenizerFast`` with bos/eos/pad/unk set, the volume and marker tokens as
        additional special tokens, padding on the left (batched generation).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK, VOLUME_TOKEN, PROMPT_TOKEN, REPORT_TOKEN]
    if vocab_size < 256 + len(specials) + 64:
        raise ConfigError(f"vocab_size {vocab_size} leaves (almost) no room for merges in a byte-level BPE.",
                          f"Use at least {256 + len(specials) + 64} (256 byte symbols + {len(specials)} special "
                          "tokens + merges); a few hundred merges or more for report text.")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left")
    return add_report_tokens(fast)


def add_report_tokens(tokenizer: object) -> object:
    """Add the volume placeholder, the prompt/report markers and the section headers, in place.

    Works on any Hugging Face tokenizer (a pretrained LLM's too); returns it. Resize the LLM's
    embeddings afterwards if ``len(tokenizer)`` grew (``model.resize_token_embeddings``).
    """
    from tokenizers import AddedToken

    tokenizer.add_special_tokens(  # type: ignore[attr-defined]
        {"additional_special_tokens": [VOLUME_TOKEN, PROMPT_TOKEN, REPORT_TOKEN]},
        replace_extra_special_tokens=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in SECTION_TOKENS])  # type: ignore[attr-defined]
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token  # type: ignore[attr-defined]
    return tokenizer
