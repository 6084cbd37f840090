"""The encoder benchmark's FLOP count must match what the model actually multiplies."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from radfm.eval.benchmarks.encoder_bench import encoder_matmul_flops
from radfm.models import RadFMEncoder, RadFMEncoderConfig


def test_analytic_flops_match_torch_flop_counter():
    cfg = RadFMEncoderConfig.from_preset("tiny", patch_size=(4, 8, 8))
    model = RadFMEncoder(cfg).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, output_pyramid=False)
    counted = counter.get_total_flops()
    n = 4 * 4 * 4
    analytic = encoder_matmul_flops(cfg, (4, 4, 4))
    # torch's counter (2 FLOPs per multiply-add) does not see the CPU flash-attention kernel,
    # so add the two attention products (4·N²·h per block) to what it counted.
    attention = 4 * n * n * cfg.hidden_size * cfg.num_layers
    assert abs(counted + attention - analytic) / analytic < 0.01, (counted, attention, analytic)
