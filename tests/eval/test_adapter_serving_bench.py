"""``radfm bench adapter-serving`` end to end on a tiny encoder: both ways answer alike, copies counted."""

from __future__ import annotations

import torch

from radfm.eval.benchmarks.adapter_serving import run
from radfm.models import RadFMEncoder, RadFMEncoderConfig


def test_bench_compares_one_shared_encoder_with_one_model_per_task(tmp_path) -> None:
    torch.manual_seed(0)
    enc = tmp_path / "enc"
    RadFMEncoder(RadFMEncoderConfig.from_preset("cnn-tiny")).save_pretrained(enc)
    out = run(["--adapters", "2", "--encoder", str(enc), "--steps", "1", "--shape", "32", "32", "32",
               "--repeats", "1", "--threads", "1", "--no-write"])
    assert out["identical"]  # the pool's label maps equal those of the adapters loaded alone
    copies = {r["serving"]: r["encoder copies"] for r in out["rows"]}
    assert copies == {"one encoder, adapters switched": 1, "one model per task": 2}
    assert all(r["RSS loaded MiB"] >= r["RSS before MiB"] > 0 for r in out["rows"])
