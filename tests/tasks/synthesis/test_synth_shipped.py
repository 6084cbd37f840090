"""The shipped low-dose model: a small bf16 decoder on the referenced shared encoder, and it denoises."""

from __future__ import annotations

import json

import numpy as np
from safetensors import safe_open

from radfm.io import Volume
from radfm.preprocess.geometry import model_to_canonical
from radfm.tasks.synthesis import default_model_dir, synthesize
from radfm.tasks.synthesis.data import phantom_hu, volume_hu
from radfm.tasks.synthesis.lowdose_sim import LowDoseModel, SliceSinograms


def test_shipped_folder_holds_the_decoder_only_in_bf16() -> None:
    d = default_model_dir()
    assert {"config.json", "model.safetensors", "preprocess_plan.json", "MODEL_CARD.md"} <= {p.name for p in d.iterdir()}
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and not any(k.startswith("encoder.") for k in keys)
        assert all(str(f.get_tensor(k).dtype) == "torch.bfloat16" for k in keys)
    assert (d / "model.safetensors").stat().st_size < 1.5 * 2**20
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["encoder_source"] == "shared" and len(cfg["encoder_sha256"]) == 64


def test_shipped_model_lowers_the_error_on_a_fine_pixel_phantom() -> None:
    clean = phantom_hu(21, shape=(128, 128, 16), spacing=(0.6, 0.6, 5.0))  # SIMULATED, never trained on
    hu, (sz, sy, sx) = volume_hu(clean)
    noise = SliceSinograms(hu[:8], (sy + sx) / 2, sz, views=180).noise_hu(LowDoseModel(dose=0.25, views=180),
                                                                          np.random.default_rng(0))
    low = np.ascontiguousarray(model_to_canonical(hu[:8] + noise), dtype=np.float32)
    ref = clean.array[:, :, :8]
    res = synthesize(Volume(array=low, affine=clean.affine, modality="CT"), task="lowdose")
    body = ref > -500
    mae_in, mae_out = float(np.abs(low - ref)[body].mean()), float(np.abs(res.array - ref)[body].mean())
    assert res.array.shape == low.shape
    assert mae_out < 0.8 * mae_in, (mae_in, mae_out)
