"""Which weights train: the strategies of few-shot adaptation and the model each one builds.

Three strategies, from cheapest to most expressive:

- ``"linear"`` (the dense "linear probe", called *head* in the docs): the encoder is frozen, only
  the dense head trains. It shows what the pretrained features already separate.
- ``"lora"``: LoRA on the encoder's attention/MLP layers (and the pyramid's 1×1 laterals; on a CNN
  encoder its residual convs, see ``radfm.adapters.lora.resolve_spec``) + the head.
- ``"full"``: every weight trains (encoder at a tenth of the head's learning rate).

``"auto"`` picks by the number of labelled cases K (:func:`choose_strategy`):

==========  =============================  ====================================================
K           choice                         why
==========  =============================  ====================================================
K ≤ 2       LoRA r=4, strong augmentation  two volumes cannot constrain millions of weights; a
                                           rank-4 update keeps the pretrained features and the
                                           stronger augmentation stands in for the missing cases
3 ≤ K ≤ 10  LoRA r=8                       the usual few-shot sweet spot: enough data to bend the
                                           features, still < 5 % of the weights (small preset)
11 ≤ K ≤ 50 LoRA r=16                      more data, more rank; still saves a small adapter
K > 50      full fine-tuning               enough data to move every weight without overfitting
==========  =============================  ====================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

import radfm  # noqa: F401  (torchvision shim before transformers/peft)
from radfm.adapters.lora import LoraSpec, attach_lora
from radfm.errors import ConfigError, InputError
from radfm.models.encoder import RadFMEncoder
from radfm.tasks.dense_segmentation.model import RadFMForDenseSegmentation
from radfm.tasks.dense_segmentation.train import AugmentConfig

__all__ = ["STRATEGIES", "Strategy", "build_model", "choose_strategy", "default_steps"]

Strategy = Literal["auto", "linear", "lora", "full"]
STRATEGIES: tuple[str, ...] = ("auto", "linear", "lora", "full")


def choose_strategy(shots: int) -> tuple[str, LoraSpec | None, AugmentConfig]:
    """``(strategy, LoRA spec or None, augmentation)`` for K = ``shots`` labelled cases (see module doc)."""
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}.")
    if shots <= 2:
        return "lora", LoraSpec(r=4, alpha=8.0, include_pyramid=True), AugmentConfig.strong()
    if shots <= 10:
        return "lora", LoraSpec(r=8, alpha=16.0, include_pyramid=True), AugmentConfig()
    if shots <= 50:
        return "lora", LoraSpec(r=16, alpha=32.0, include_pyramid=True), AugmentConfig()
    return "full", None, AugmentConfig()


def default_steps(shots: int) -> int:
    """Steps when none are given: a floor for one case, a little more per extra case, capped for CPU."""
    return int(min(150 + 25 * shots, 600))


def build_model(
    encoder: RadFMEncoder,
    num_classes: int,
    strategy: str,
    *,
    lora: LoraSpec | None = None,
    label_names: Mapping[int, str] | None = None,
    adapter_name: str = "task",
    seed: int = 0,
) -> nn.Module:
    """Encoder copy + new head, set up for ``strategy`` ("linear", "lora" or "full").

    "linear" and "lora" return a PeftModel (base weights frozen; the head in ``modules_to_save``);
    "full" returns the plain model with every weight trainable. The seed fixes the new weights.
    """
    torch.manual_seed(seed)
    model = RadFMForDenseSegmentation.from_encoder(
        encoder, num_classes, id2label=dict(label_names) if label_names else None)
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if strategy == "linear":
        return attach_lora(model, adapter_name, LoraSpec(targets=()), modules_to_save=("head",))
    if strategy == "lora":
        return attach_lora(model, adapter_name, lora or LoraSpec(), modules_to_save=("head",))
    raise ConfigError(f"unknown strategy {strategy!r}.", f"Choose one of {STRATEGIES}.")
