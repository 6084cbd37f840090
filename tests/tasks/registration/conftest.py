"""Fixtures of the registration tests."""

from __future__ import annotations

import pytest
from regtest_utils import tiny_config

from radfm.tasks.registration.model import RadFMRegistration


@pytest.fixture
def tiny_model() -> RadFMRegistration:
    """An untrained tiny model: its flow convs start at zero, so it predicts the identity map."""
    return RadFMRegistration(tiny_config()).eval()
