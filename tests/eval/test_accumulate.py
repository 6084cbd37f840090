"""The accumulator's NaN bookkeeping and tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfm.eval.accumulate import MetricAccumulator


def test_accumulator_aggregate_with_nan() -> None:
    acc = MetricAccumulator()
    acc.add("c1", dice=0.8, hd95=2.0)
    acc.add("c2", dice=0.6, hd95=float("nan"))
    acc.add("c3", dice=torch.tensor(1.0))
    acc.add("c3", hd95=np.float64(4.0))  # a second call adds metrics to the same case
    agg = acc.aggregate()
    assert agg["dice"] == {"mean": pytest.approx(0.8), "std": pytest.approx(np.std([0.8, 0.6, 1.0])),
                           "median": pytest.approx(0.8), "n": 3, "n_nan": 0}
    assert agg["hd95"]["mean"] == pytest.approx(3.0) and agg["hd95"]["median"] == pytest.approx(3.0)
    assert agg["hd95"]["n"] == 2 and agg["hd95"]["n_nan"] == 1
    assert [r["case_id"] for r in acc.rows()] == ["c1", "c2", "c3"] and len(acc) == 3
    with pytest.raises(ValueError, match="already recorded"):
        acc.add("c1", dice=0.1)
    md = acc.to_markdown(precision=2)
    assert md.splitlines()[0] == "| metric | mean | std | median | n | n_nan |"
    assert "| dice | 0.80 |" in md
    assert acc.to_markdown(per_case=True).splitlines()[0] == "| case_id | dice | hd95 |"
    acc.reset()
    assert acc.aggregate() == {} and acc.rows() == []


def test_accumulator_all_nan_metric() -> None:
    acc = MetricAccumulator()
    acc.add("a", hd95=float("nan"))
    s = acc.aggregate()["hd95"]
    assert math.isnan(s["mean"]) and s["n"] == 0 and s["n_nan"] == 1
