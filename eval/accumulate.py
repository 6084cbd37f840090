"""Collect per-case metric values and summarise them (MONAI's ``aggregate()`` idea, minus tensors).

Why a class of its own: every evaluation loop needs the same bookkeeping — a value per case and
metric, a NaN-aware summary that says how many cases were undefined (e.g. HD95 with an empty
prediction), and a table for the docs — and doing it ad hoc is where NaNs silently vanish.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from radfm.eval.benchreport import markdown_table

__all__ = ["MetricAccumulator"]


def _to_float(value: Any) -> float:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"metric values must be scalars, got an array of shape {arr.shape}")
    return float(arr.reshape(()))


class MetricAccumulator:
    """Per-case scalar metrics with a NaN-aware summary.

    Example::

        acc = MetricAccumulator()
        acc.add("case01", dice=0.91, hd95=3.2)
        acc.add("case02", dice=0.0, hd95=float("nan"))   # missed structure
        acc.aggregate()["hd95"]  # {'mean': 3.2, 'std': 0.0, 'median': 3.2, 'n': 1, 'n_nan': 1}
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, float]] = {}
        self._names: list[str] = []

    def add(self, case_id: str, **values: Any) -> None:
        """Record scalar metric values for one case.

        Calling again with the same ``case_id`` adds further metrics to that case (e.g. Dice from one
        loop, timings from another); recording the same metric twice for a case is an error, since it
        would otherwise be counted twice or silently overwritten.
        """
        row = self._rows.setdefault(str(case_id), {})
        for name, value in values.items():
            if name in row:
                raise ValueError(f"metric {name!r} already recorded for case {case_id!r}")
            row[name] = _to_float(value)
            if name not in self._names:
                self._names.append(name)

    @property
    def names(self) -> list[str]:
        """Metric names in the order they were first added."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case, ``{"case_id": ..., metric: value, ...}``, in insertion order (missing → nan)."""
        return [{"case_id": cid, **{n: row.get(n, float("nan")) for n in self._names}}
                for cid, row in self._rows.items()]

    def aggregate(self) -> dict[str, dict[str, float | int]]:
        """Summary per metric: ``mean``, ``std`` (population, ddof=0), ``median``, ``n``, ``n_nan``.

        NaN values (and cases lacking the metric) are left out of the statistics and counted in
        ``n_nan``; ``n`` is the number of values used. ``inf`` is kept, so a mean becomes inf when a
        case was scored inf (the median stays informative). A metric with no finite-or-inf value
        gets nan statistics and ``n = 0``.
        """
        out: dict[str, dict[str, float | int]] = {}
        for name in self._names:
            vals = np.array([row.get(name, float("nan")) for row in self._rows.values()], dtype=np.float64)
            good = vals[~np.isnan(vals)]
            n_nan = int(vals.size - good.size)
            if good.size == 0:
                stats = {"mean": math.nan, "std": math.nan, "median": math.nan}
            else:
                with np.errstate(invalid="ignore"):  # inf - inf inside std → nan, which is right
                    stats = {"mean": float(good.mean()), "std": float(good.std()),
                             "median": float(np.median(good))}
            out[name] = {**stats, "n": int(good.size), "n_nan": n_nan}
        return out

    def to_markdown(self, precision: int = 3, *, per_case: bool = False) -> str:
        """A markdown table of the summary (one row per metric), or of every case with ``per_case=True``.

        ``precision`` is the number of significant digits (see :func:`radfm.eval.benchreport.markdown_table`).
        """
        if per_case:
            return markdown_table(self.rows(), precision=precision)
        rows = [{"metric": name, **stats} for name, stats in self.aggregate().items()]
        return markdown_table(rows, precision=precision)

    def reset(self) -> None:
        """Forget all cases (start a new evaluation)."""
        self._rows.clear()
        self._names.clear()
