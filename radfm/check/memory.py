"""Memory check: the run's working memory (float32 copies) against the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radfm.check.report import _Findings
from radfm.check.thresholds import MEMORY_FACTOR


def _check_memory(arr: np.ndarray, found: _Findings, summary: dict[str, Any],
                  budget_bytes: int | None) -> None:
    """Estimate working memory (float32 copies) against the budget or the machine's free memory."""
    need = int(arr.size) * 4 * MEMORY_FACTOR
    if budget_bytes is None:
        import psutil

        budget_bytes = int(psutil.virtual_memory().available)
    mib = 1024**2
    summary["memory_mib"] = need / mib
    summary["memory_budget_mib"] = budget_bytes / mib
    size = "×".join(map(str, arr.shape))
    if need > budget_bytes:
        found.error("too_large", f"Processing this {size} image needs about {need / mib:,.0f} MiB but only "
                    f"{budget_bytes / mib:,.0f} MiB are available.",
                    "Crop to the region of interest, use the sliding-window option, or run on a machine with "
                    "more memory.")
    elif need > 0.5 * budget_bytes:
        found.warn("too_large", f"Processing this {size} image needs about {need / mib:,.0f} MiB, more than "
                   f"half of the {budget_bytes / mib:,.0f} MiB available.",
                   "Close other programs, crop, or use the sliding-window option if the run gets killed.")

