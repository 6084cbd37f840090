"""What every task trainer starts with: the processes (accelerate), their seeds, and the LR schedule.

Why here: the registration and synthesis trainers opened with the same dozen lines; one copy keeps
multi-process seeding (rank-offset torch seed, one historical numpy stream for one process) and the
warm-up + cosine schedule the same in every task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["start_processes", "start_recipe_run", "warmup_cosine"]


def start_processes(seed: int, accelerator: Any = None) -> tuple[Any, int, bool, np.random.Generator]:
    """``(accelerator, rank, is_main, rng)``; a CPU/GPU ``Accelerator`` is made when none is given.

    torch is seeded ``seed + rank``; one process keeps the stream of ``seed`` alone, so
    single-process runs reproduce earlier ones, and several get ``[seed, rank]``.
    """
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank = accelerator.process_index
    torch.manual_seed(seed + rank)
    rng = np.random.default_rng(seed if accelerator.num_processes == 1 else [seed, rank])
    return accelerator, rank, accelerator.is_main_process, rng


def warmup_cosine(opt: torch.optim.Optimizer, *, warmup: int, steps: int,
                  floor: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps times a cosine from 1 to ``floor`` over ``steps``.

    Not passed through ``accelerator.prepare``: its wrapper would step the schedule once per process.
    """
    def factor(s: int) -> float:
        ramp = min(1.0, (s + 1) / max(warmup, 1))
        return ramp * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def start_recipe_run(*, threads: int | None, cpu: bool, seed: int, output_dir: str | Path) -> tuple[Any, Path]:
    """``(accelerator, output folder)`` of a recipe run: torch threads set, the model-building seed fixed."""
    from accelerate import Accelerator

    if threads:
        torch.set_num_threads(threads)
    accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available())
    torch.manual_seed(seed)
    return accelerator, Path(output_dir)
