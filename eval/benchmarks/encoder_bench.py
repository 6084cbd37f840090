"""``radfm bench encoder``: forward throughput of the shared encoder and how close it gets to peak.

Why a peak fraction: absolute volumes/s depend on the machine; the fraction of the matmul peak
*measured in the same run on the same machine* says whether the encoder is compute-bound and
well fed (large GEMMs, bf16 on AMX) or wasting time in glue (reshapes, attention softmax,
small ops). The goal in the encoder issue is ≥ 40 % of the bf16 peak.

Method: the peak is the best of a few 2048×2048×2048 matmuls in each dtype (one call, 2 threads
by default). The encoder's matmul FLOPs are counted analytically per forward:
patch embedding 2·N·h·(C·p³), and per block 2·N·(3h² + h² + 2·h·m) for qkv, proj and the MLP
(m = mlp hidden) plus 4·N²·h for the two attention products. Other ops (norms, GELU, softmax,
pyramid convs) count as overhead. Throughput = FLOPs / median forward time; fraction =
throughput / measured peak of the same dtype. fp32 runs plain; bf16 runs under
``torch.autocast("cpu", dtype=torch.bfloat16)`` with bf16 weights too ("bf16 weights" row), the
way inference is served.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import torch

from radfm.eval.benchreport import (
    add_output_args,
    default_md_path,
    machine_info,
    parse_with_threads,
    timed,
    write_section,
)
from radfm.models import RadFMEncoder, RadFMEncoderConfig

NAME = "encoder"
TITLE = "Encoder: forward throughput and fraction of the measured matmul peak"


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best observed GFLOP/s of an n×n×n matmul in ``dtype`` (the machine's practical peak)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    t = timed(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n**3 / t.min_s / 1e9


def encoder_matmul_flops(cfg: RadFMEncoderConfig, grid: tuple[int, int, int]) -> float:
    """Analytic matmul FLOPs of one forward of the trunk for a token grid (see module docstring)."""
    n = grid[0] * grid[1] * grid[2]
    h = cfg.hidden_size
    m = int(h * cfg.mlp_ratio)
    p = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    embed = 2 * n * h * cfg.in_channels * p
    block = 2 * n * (4 * h * h + 2 * h * m) + 4 * n * n * h
    return float(embed + cfg.num_layers * block)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="encoder preset (default: small)")
    p.add_argument("--size", type=int, nargs=3, default=[64, 128, 128], metavar=("D", "H", "W"),
                   help="input volume (D H W) in voxels (default: 64 128 128)")
    p.add_argument("--patch", type=int, nargs=3, default=[8, 16, 16], metavar=("PD", "PH", "PW"),
                   help="token patch size (default: 8 16 16 → 512 tokens for the default size)")
    p.add_argument("--batch", type=int, default=1, help="volumes per forward (default: 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pyramid", action="store_true", help="also build the dense feature pyramid")
    add_output_args(p)
    return p


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Time fp32 / bf16 forwards of the encoder beside the matmul peak; write docs + JSON."""
    from rich.console import Console
    from rich.table import Table

    args = parse_with_threads(_parser(), argv)
    cfg = RadFMEncoderConfig.from_preset(args.preset, patch_size=tuple(args.patch))
    model = RadFMEncoder(cfg).eval()
    x = torch.randn(args.batch, cfg.in_channels, *args.size)
    grid = tuple(s // p for s, p in zip(args.size, args.patch))
    flops = encoder_matmul_flops(cfg, grid) * args.batch
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}

    def fwd(m: torch.nn.Module, autocast: bool) -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return m(x, output_pyramid=args.pyramid)

    model_bf16 = RadFMEncoder(cfg).eval()
    model_bf16.load_state_dict(model.state_dict())
    model_bf16 = model_bf16.to(torch.bfloat16)
    runs = {
        "fp32": (lambda: fwd(model, False), "fp32"),
        "bf16 autocast": (lambda: fwd(model, True), "bf16"),
        "bf16 weights": (lambda: fwd(model_bf16, True), "bf16"),
    }
    rows = []
    base = None
    for label, (fn, peak_key) in runs.items():
        t = timed(fn, repeats=args.repeats, warmup=2)
        gflops = flops / t.median_s / 1e9
        base = base or t.median_s
        rows.append({
            "mode": label, "forward s (median)": t.median_s, "volumes/s": args.batch / t.median_s,
            "tokens/s": args.batch * grid[0] * grid[1] * grid[2] / t.median_s, "matmul GFLOP/s": gflops,
            "peak dtype": peak_key, "peak GFLOP/s": peaks[peak_key], "% of peak": 100 * gflops / peaks[peak_key],
            "speed-up vs fp32": base / t.median_s,
        })
    table = Table(title=TITLE)
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    Console(width=200).print(table)
    n_params = sum(p.numel() for p in model.parameters())
    results = {"preset": args.preset, "input": [args.batch, cfg.in_channels, *args.size], "patch": args.patch,
               "tokens": grid[0] * grid[1] * grid[2], "params": n_params, "matmul_gflop_per_forward": flops / 1e9,
               "peaks_gflops": peaks, "rows": rows}
    if not args.no_write:
        command = "radfm bench encoder " + shlex.join(list(argv or []))
        notes = (f"Preset `{args.preset}` ({n_params / 1e6:.1f} M parameters), input "
                 f"{args.batch}×{cfg.in_channels}×{'×'.join(map(str, args.size))}, patch {tuple(args.patch)} → "
                 f"{results['tokens']} tokens, {flops / 1e9:.1f} GFLOP of matmul per forward"
                 f"{' (pyramid on)' if args.pyramid else ' (trunk only)'}. Peaks are 2048³ matmuls measured in "
                 "the same run. Goal: ≥ 40 % of the bf16 peak.")
        write_section(args.out or default_md_path(), NAME, title=TITLE, command=command.strip(), table=rows,
                      notes=notes, json_path=args.json_path, results=results, machine=machine_info())
    return results
