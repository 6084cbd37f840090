"""One ReportDrafter for every caller: in-process transformers and a served backend draft the same
report, and one findings parser reads the CLI's and the route's findings."""

from __future__ import annotations

import pytest
import torch

from radfm.data.findings import Finding
from radfm.data.phantom import make_phantom
from radfm.errors import InputError
from radfm.serve.backends import TransformersBackend
from radfm.tasks.report.drafting import ReportDrafter, draft_report
from radfm.tasks.report.model import load_report_model
from radfm.tasks.report.prompting import parse_findings


class RecordingBackend:
    """A backend that answers through a real one and records what it was asked."""

    name = "recording"

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner, self.calls = inner, []

    def generate(self, prompt_embeds: list[torch.Tensor], *, max_new_tokens: int,
                 adapter: str | None = None) -> list[list[int]]:
        self.calls.append((prompt_embeds[0].shape, max_new_tokens, adapter))
        return self.inner.generate(prompt_embeds, max_new_tokens=max_new_tokens)


@pytest.mark.parametrize("kind", ["vlm", "text"])
def test_in_process_and_served_backends_draft_the_same_report(kind, tiny_vlm_dir, tiny_text_dir) -> None:
    model_dir = tiny_vlm_dir if kind == "vlm" else tiny_text_dir
    rm = load_report_model(model_dir)
    rm.meta["adapter"] = "findings"  # a served LLM adapter name: asked for by name from a served backend only
    case = make_phantom(5, shape=(32, 32, 32), spacing=(8.0, 8.0, 8.0))
    volume = case.image if kind == "vlm" else None
    local = ReportDrafter(rm)
    served = RecordingBackend(TransformersBackend(rm.llm_dir))
    remote = ReportDrafter(rm, served)
    try:
        assert local.adapter is None and remote.adapter == "findings"
        a, timing = local.draft_timed(volume, case.findings, max_new_tokens=12)
        b = remote.draft(volume, case.findings, max_new_tokens=12)
        assert a.to_dict() == b.to_dict() and a.source == ("image+findings" if kind == "vlm" else "findings")
        assert set(timing) == {"prepare", "generate", "total"}
        (shape, max_new, adapter), = served.calls
        assert max_new == 12 and adapter == "findings" and shape[0] > 0
        assert draft_report(volume, case.findings, rm, max_new_tokens=12).to_dict() == a.to_dict()
    finally:
        local.close()
        served.inner.close()


def test_in_process_backend_reuses_the_models_own_llm(tiny_text_dir) -> None:
    rm = load_report_model(tiny_text_dir)
    drafter = ReportDrafter(rm)
    try:
        assert drafter.backend.model is rm.language_model  # no second copy of the weights
    finally:
        drafter.close()


def test_one_findings_parser_for_text_json_and_lists() -> None:
    nodule = {"finding": "nodule", "organ": "lung", "size_mm": 8, "location": "right lower lobe"}
    assert parse_findings(None) is None and parse_findings("  ") is None
    assert parse_findings("Cardiomegaly;  Opacity/lung/base/left ;") == ["Cardiomegaly", "Opacity/lung/base/left"]
    from_text = parse_findings('[{"finding": "nodule", "organ": "lung", "size_mm": 8, "location": "right lower lobe"},'
                               ' "Cardiomegaly"]')
    from_list = parse_findings([nodule, "Cardiomegaly"])
    assert from_text == from_list and isinstance(from_list[0], Finding) and from_list[1] == "Cardiomegaly"
    assert parse_findings([]) == [] and parse_findings(from_list) == from_list
    with pytest.raises(InputError, match="do not parse"):
        parse_findings("[not json")
    with pytest.raises(InputError, match="invalid"):
        parse_findings('[{"organ": 1}]')
    with pytest.raises(InputError, match="list of strings"):
        parse_findings([1, 2])
