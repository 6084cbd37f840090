"""The findings-conditioned prompt and the report target: one format for training and drafting.

Why one small module: the prompt a model was trained with is part of the model. Training,
drafting, the HTTP route and the benchmark all build prompts here, and a model folder records
``PROMPT_VERSION`` so a changed format cannot silently meet an old model.

Prompt (``Q`` = placeholders per volume; each part only when present)::

    <s><|prompt|> Volume: <volume>×Q Findings: nodule (lung, 8 mm, right lower lobe); cardiomegaly<|report|>

Target (loss only here)::

    FINDINGS: <findings section> IMPRESSION: <impression section></s>

``Findings:`` lists structured findings (organ, finding, size, location) or free label strings
(IU X-ray MeSH/Problems such as ``Opacity/lung/base/left``); ``Findings: none`` means "no
abnormal finding given", while no ``Findings:`` part at all means "nothing known — read the
image".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from radfm.data.findings import Finding
from radfm.data.report_text import format_size
from radfm.errors import InputError
from radfm.tasks.report.tokenizer import PROMPT_TOKEN, REPORT_TOKEN, SECTION_TOKENS, VOLUME_TOKEN

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_VERSION",
    "EncodedExample",
    "build_prompt",
    "collate",
    "encode_example",
    "format_finding",
    "format_target",
    "normalize_text",
    "parse_findings",
    "parse_label_string",
    "parse_report",
]

PROMPT_VERSION = 1
IGNORE_INDEX = -100
_WS = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """Collapse whitespace and strip (in memory; source files are never modified)."""
    return _WS.sub(" ", text or "").strip()


def parse_label_string(labels: str | None, sep: str = ";") -> list[str]:
    """``"Cardiomegaly; Opacity/lung/base/left"`` -> ``["Cardiomegaly", "Opacity/lung/base/left"]``.

    Empty parts are dropped; order and duplicates are kept (they are what the user gave).
    """
    return [p for p in (normalize_text(x) for x in (labels or "").split(sep)) if p]


def parse_findings(raw: str | Sequence[Finding | str | dict] | None) -> list[Finding | str] | None:
    """The one reader of user-given findings (``radfm report``, ``POST /v1/report``, ``draft_report``).

    ``raw``: ``None`` or blank text → ``None`` (not known: read the image); a JSON list as text
    (``'[{"finding": "nodule", "organ": "lung"}, "Cardiomegaly"]'``) or an already parsed list of
    strings, ``Finding`` objects and ``Finding`` dicts → a list (``[]``: no findings); other text →
    :func:`parse_label_string` (``"Cardiomegaly; Opacity/lung/base/left"``). Raises InputError
    naming what is wrong.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if not text.startswith("["):
            return parse_label_string(text)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"the findings look like JSON but do not parse: {exc.msg}.") from exc
    if not isinstance(raw, Sequence) or not all(isinstance(f, (str, dict, Finding)) for f in raw):
        raise InputError("findings must be a list of strings or finding objects.")
    try:
        return [Finding.from_dict(f) if isinstance(f, dict) else f for f in raw]
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"a finding object is invalid: {exc}.",
                         "Each needs 'finding' and 'organ'; optional size_mm, location, label_id, bbox_ijk.") from exc


def format_finding(finding: Finding | str) -> str:
    """One finding as prompt text: ``"nodule (lung, 8 mm, right lower lobe)"`` or the label as is."""
    if isinstance(finding, str):
        return normalize_text(finding)
    details = [finding.organ]
    if finding.size_mm:
        details.append(format_size(finding.size_mm))
    if finding.location and finding.location not in (finding.organ, "unspecified location"):
        details.append(finding.location)
    return f"{finding.finding} ({', '.join(details)})"


def build_prompt(
    findings: Sequence[Finding | str] | None = None,
    *,
    num_volume_tokens: int = 0,
    volume_token: str = VOLUME_TOKEN,
) -> str:
    """Prompt text (without ``<s>``) ending in the answer marker ``<|report|>``.

    Args:
        findings: structured findings or label strings; ``None`` = no findings part,
            ``[]`` = "Findings: none".
        num_volume_tokens: placeholders for one volume (the model's ``num_volume_tokens``);
            0 = text-only prompt.
        volume_token: the placeholder text.
    """
    parts = [PROMPT_TOKEN]
    if num_volume_tokens:
        parts.append(" Volume: " + volume_token * num_volume_tokens)
    if findings is not None:
        listed = "; ".join(format_finding(f) for f in findings)
        parts.append(" Findings: " + (listed or "none"))
    parts.append(REPORT_TOKEN)
    return "".join(parts)


def format_target(findings_text: str, impression_text: str | None = None) -> str:
    """``"FINDINGS: … IMPRESSION: …"`` (impression part only when given)."""
    out = f"{SECTION_TOKENS[0]} {normalize_text(findings_text)}"
    if impression_text is not None and normalize_text(impression_text):
        out += f" {SECTION_TOKENS[1]} {normalize_text(impression_text)}"
    return out


_SECTION_RE = re.compile(r"(FINDINGS:|IMPRESSION:)")


def parse_report(text: str) -> tuple[str, str]:
    """Generated text -> ``(findings_text, impression_text)``.

    Text before any header counts as findings; a repeated header is merged into its section
    (tiny models sometimes repeat one).
    """
    sections = {"FINDINGS:": [], "IMPRESSION:": []}
    current = "FINDINGS:"
    for piece in _SECTION_RE.split(text):
        if piece in sections:
            current = piece
        elif piece.strip():
            sections[current].append(normalize_text(piece))
    return " ".join(sections["FINDINGS:"]), " ".join(sections["IMPRESSION:"])


@dataclass
class EncodedExample:
    """Token ids of one example; ``labels`` is ``IGNORE_INDEX`` on ``<s>`` and the prompt."""

    input_ids: list[int]
    labels: list[int]

    @property
    def prompt_length(self) -> int:
        return next((i for i, v in enumerate(self.labels) if v != IGNORE_INDEX), len(self.labels))


def encode_example(tokenizer: object, prompt: str, target: str | None = None, *,
                   max_length: int | None = None) -> EncodedExample:
    """``<s> prompt [target </s>]`` as ids, with labels only on the target and ``</s>``.

    Prompt and target are tokenised separately so the loss boundary is exact. With
    ``max_length`` the *target* is truncated (keeping ``</s>`` off, so a cut report is not
    taught to end there); the prompt is never cut, since a half volume prefix is meaningless.
    """
    tok = tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id  # type: ignore[attr-defined]
    p_ids = [bos, *tok(prompt, add_special_tokens=False)["input_ids"]]  # type: ignore[operator]
    if target is None:
        return EncodedExample(p_ids, [IGNORE_INDEX] * len(p_ids))
    t_ids = [*tok(target, add_special_tokens=False)["input_ids"], eos]  # type: ignore[operator]
    if max_length is not None and len(p_ids) + len(t_ids) > max_length:
        t_ids = t_ids[: max(max_length - len(p_ids), 1)]  # drops </s>, which is last
    return EncodedExample(p_ids + t_ids, [IGNORE_INDEX] * len(p_ids) + t_ids)


def collate(examples: Sequence[EncodedExample], pad_id: int, *, left_pad: bool = False,
            pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest example: ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)``.

    Right padding for training (positions stay 0..n), left padding for batched generation.
    ``pad_to_multiple`` rounds ``L`` up: training uses 32, because every new sequence length is a
    new matmul shape, and under bf16 on CPU oneDNN caches a kernel per shape (memory grew by
    gigabytes over a run with exact lengths).
    """
    n = max(len(e.input_ids) for e in examples)
    n = -(-n // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        sl = slice(n - k, n) if left_pad else slice(0, k)
        ids[i, sl] = torch.tensor(e.input_ids)
        labels[i, sl] = torch.tensor(e.labels)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
