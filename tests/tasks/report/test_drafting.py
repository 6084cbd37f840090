"""Sentence ↔ finding links, finding-level scoring, and drafting through saved model folders."""

from __future__ import annotations

import pytest
import torch

from radfm.data.findings import Finding
from radfm.data.phantom import make_phantom
from radfm.errors import InputError
from radfm.tasks.report.drafting import (
    DISCLAIMER,
    draft_report,
    link_sentences,
    mentioned_findings,
)
from radfm.tasks.report.model import load_report_model


def test_the_matcher_reads_every_rendered_phantom_report_exactly() -> None:
    for s in range(40):
        body = "head" if s % 4 == 0 else "chest_abdomen"
        c = make_phantom(s, shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0), body=body)
        assert mentioned_findings(c.report.text) == {(f.finding, f.organ) for f in c.findings}, c.report.text


def test_negated_and_organ_specific_mentions() -> None:
    assert mentioned_findings("FINDINGS: No pleural effusion. No renal mass or cyst. IMPRESSION: Normal.") == set()
    got = mentioned_findings("A 2.1 cm cyst in the right hepatic lobe segment VII. Cyst in the left kidney.")
    assert got == {("cyst", "liver"), ("cyst", "kidney")}


def test_links_carry_the_findings_voxels_and_skip_negations() -> None:
    fs = [Finding("nodule", "lung", 8.0, "right lower lobe", 12, (1, 2, 3, 4, 5, 6)),
          Finding("nodule", "lung", 9.0, "left upper lobe", 13, (7, 8, 9, 10, 11, 12)),
          Finding("pleural effusion", "pleura", None, "left", 11, None)]
    s = link_sentences("A 9 mm nodule in the left upper lobe. No pleural effusion. Left pleural effusion.",
                       "Nodule in the right lower lobe.", fs)
    assert [x.finding_index for x in s] == [1, None, 2, 0]
    assert s[0].label_id == 13 and s[0].bbox_ijk == [7, 8, 9, 10, 11, 12] and s[0].link == "given"
    assert s[3].section == "impression"
    labels = link_sentences("Mild cardiomegaly. Opacity at the left lung base.", "", ["Opacity/lung/base/left",
                                                                                     "Cardiomegaly"])
    assert [x.finding_index for x in labels] == [1, 0]
    free = link_sentences("A 2 cm cyst in the lower pole of the left kidney.", "", None)
    assert free[0].link == "mentioned" and free[0].finding["organ"] == "kidney"
    assert free[0].finding["location"] == "lower pole of the left kidney"


def test_drafts_from_saved_models_are_marked_as_drafts(tiny_vlm_dir, tiny_text_dir) -> None:
    case = make_phantom(3, shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0))
    vlm = load_report_model(tiny_vlm_dir)
    assert vlm.kind == "vlm" and (tiny_vlm_dir / "llm" / "config.json").is_file()
    for volume, findings, source in ((case.image, None, "image"), (case.image, case.findings, "image+findings"),
                                     (None, case.findings, "findings")):
        d = draft_report(volume, findings, vlm, max_new_tokens=8)
        assert d.is_draft and d.disclaimer == DISCLAIMER and d.source == source
        assert d.to_dict()["is_draft"] is True
    text = load_report_model(tiny_text_dir)
    d = draft_report(None, ["Cardiomegaly"], text, max_new_tokens=8)
    assert d.source == "findings"
    with pytest.raises(InputError, match="findings only"):
        draft_report(case.image, None, text)
    with pytest.raises(InputError, match="nothing to draft"):
        draft_report(None, None, text)


def test_vlm_generation_equals_the_standalone_llm_on_prompt_embeds(tiny_vlm_dir) -> None:
    """What a serving backend does (LLM folder + prompt embeddings) gives the model's own tokens."""
    from transformers import AutoModelForCausalLM

    from radfm.tasks.report.drafting import prepare_inputs

    rm = load_report_model(tiny_vlm_dir)
    case = make_phantom(5, shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0))
    inp = prepare_inputs(rm, case.image, case.findings)
    own = rm.model.generate(inp["input_ids"], pixel_values=inp["pixel_values"], modality_ids=inp.get("modality_ids"),
                            max_new_tokens=10, min_new_tokens=10)
    embeds = rm.model.prompt_embeds(inp["input_ids"], pixel_values=inp["pixel_values"],
                                    modality_ids=inp.get("modality_ids"))
    llm = AutoModelForCausalLM.from_pretrained(rm.llm_dir).eval()
    other = llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                         max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert torch.equal(own, other)
