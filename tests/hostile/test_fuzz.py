"""A short plain-mutation fuzz run per loader (about a second each): no non-radfm exception escapes."""

from __future__ import annotations

import logging
import warnings

import pytest

from tests.hostile.fuzz import _seeds, plain_run


@pytest.mark.parametrize("loader", sorted(_seeds()))
def test_loader_survives_mutation(loader: str) -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    try:
        n = plain_run(loader, 1.0, seed=7)
    finally:
        logging.disable(logging.NOTSET)
    assert n >= 5  # it really ran
