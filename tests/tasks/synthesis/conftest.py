"""Fixtures of the synthesis tests: a tiny model (random head, so it is not the identity) and phantom CTs."""

from __future__ import annotations

import pytest
import torch

from radfm.tasks.synthesis.config import RadFMSynthConfig
from radfm.tasks.synthesis.model import RadFMSynthesis


def tiny_model(seed: int = 0) -> RadFMSynthesis:
    """A fresh "cnn-tiny" model whose zero-initialised head is replaced by small random weights."""
    torch.manual_seed(seed)
    model = RadFMSynthesis(RadFMSynthConfig(decoder_channels=(4, 4, 4, 4), window=(16, 32, 32)))
    torch.nn.init.normal_(model.head.weight, std=0.05)
    return model.eval()


@pytest.fixture
def tiny() -> RadFMSynthesis:
    return tiny_model()
