"""Prompt format, tokenizer special tokens and label masking."""

from __future__ import annotations

from radfm.data.findings import Finding
from radfm.tasks.report.prompting import (
    IGNORE_INDEX,
    build_prompt,
    collate,
    encode_example,
    format_finding,
    format_target,
    parse_label_string,
    parse_report,
)
from radfm.tasks.report.tokenizer import REPORT_TOKEN, SECTION_TOKENS, VOLUME_TOKEN


def test_prompt_states_structured_findings_and_volume_placeholders() -> None:
    f = Finding("nodule", "lung", 8.2, "right lower lobe")
    p = build_prompt([f, "Cardiomegaly"], num_volume_tokens=3)
    assert p.count(VOLUME_TOKEN) == 3 and p.endswith(REPORT_TOKEN)
    assert "Findings: nodule (lung, 8 mm, right lower lobe); Cardiomegaly" in p
    assert "Findings: none" in build_prompt([])
    assert "Findings" not in build_prompt(None, num_volume_tokens=2)
    assert format_finding(Finding("cardiomegaly", "heart", 140.0, "heart")) == "cardiomegaly (heart, 14.0 cm)"


def test_labels_and_sections_parse() -> None:
    assert parse_label_string(" Cardiomegaly; Opacity/lung/base/left ;; ") == ["Cardiomegaly", "Opacity/lung/base/left"]
    t = format_target("The heart is enlarged.  ", "Cardiomegaly.")
    assert t == "FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly."
    assert parse_report(t) == ("The heart is enlarged.", "Cardiomegaly.")
    assert parse_report("No effusion. IMPRESSION: Normal.") == ("No effusion.", "Normal.")


def test_tokenizer_keeps_special_tokens_atomic_and_section_headers_in_decode(tokenizer) -> None:
    ids = tokenizer(build_prompt(None, num_volume_tokens=4) + format_target("Clear lungs.", "Normal."),
                    add_special_tokens=False)["input_ids"]
    vid = tokenizer.convert_tokens_to_ids(VOLUME_TOKEN)
    assert ids.count(vid) == 4
    for s in SECTION_TOKENS:
        assert tokenizer.convert_tokens_to_ids(s) in ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert VOLUME_TOKEN not in text and text.endswith("FINDINGS: Clear lungs. IMPRESSION: Normal.")


def test_loss_only_on_report_tokens(tokenizer) -> None:
    e = encode_example(tokenizer, build_prompt(["Cardiomegaly"], num_volume_tokens=2), format_target("Big heart."))
    n_prompt = e.prompt_length
    assert e.input_ids[0] == tokenizer.bos_token_id and e.input_ids[-1] == tokenizer.eos_token_id
    assert all(v == IGNORE_INDEX for v in e.labels[:n_prompt])
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:]
    assert tokenizer.decode(e.input_ids[n_prompt:-1]).strip() == "FINDINGS: Big heart."
    cut = encode_example(tokenizer, build_prompt([]), format_target("Big heart. " * 20), max_length=20)
    assert len(cut.input_ids) == 20 and cut.input_ids[-1] != tokenizer.eos_token_id
    batch = collate([e, cut], tokenizer.pad_token_id, left_pad=True)
    assert batch["input_ids"].shape[0] == 2 and int(batch["attention_mask"][0].sum()) == len(e.input_ids)
