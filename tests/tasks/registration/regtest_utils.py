"""Tiny registration models for the registration tests (a plain module: ``conftest`` is a shared name)."""

from __future__ import annotations

import radfm  # noqa: F401  (torchvision shim before transformers)
from radfm.models import RadFMEncoderConfig
from radfm.tasks.registration.model import RadFMRegConfig


def tiny_config(**overrides) -> RadFMRegConfig:
    """Encoder: 2 blocks of width 32 with 8³ patches; decoder widths 8-16 (a few seconds per test)."""
    enc = RadFMEncoderConfig.from_preset("tiny", hidden_size=32, num_layers=2, num_heads=2, patch_size=(8, 8, 8))
    kw = {"encoder_config": enc, "stem_channels": (4, 8), "decoder_channels": (16, 12, 8)}
    return RadFMRegConfig(**{**kw, **overrides})


