"""What a LoRA adapter adapts, and how much: :class:`LoraSpec` and the encoder's target names.

Why apart: recipes, benchmarks and the attach functions all read a spec, and none of them needs
peft to do so (peft loads only when :meth:`LoraSpec.to_peft_config` is called).

Module names (see ``radfm.models.encoder``): LoRA targets ``qkv``, ``attn.proj``, ``fc1``, ``fc2``
(and optionally ``patch_embed.proj``, ``pyramid.lateral.N``); a CNN trunk's are its residual convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.errors import ConfigError

__all__ = ["DEFAULT_TARGETS", "PYRAMID_TARGETS", "LoraSpec", "cnn_lora_targets", "resolve_spec"]

DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "attn.proj", "fc1", "fc2")
#: The 1×1 ``lateral`` convs of the encoder's feature pyramid (``include_pyramid``).
PYRAMID_TARGETS: tuple[str, ...] = tuple(f"pyramid.lateral.{i}" for i in range(4))


def cnn_lora_targets(encoder_config: Any) -> tuple[str, ...]:
    """peft suffixes of a CNN trunk's residual convs (``stages.S.B.conv1/2``: names only the encoder has)."""
    return tuple(f"stages.{s}.{b}.conv{k}" for s, n in enumerate(encoder_config.cnn_blocks)
                 for b in range(n) for k in (1, 2))


def resolve_spec(spec: LoraSpec | None, encoder: nn.Module | None) -> LoraSpec:
    """``spec`` made valid for ``encoder``'s architecture.

    Why: recipes name ViT layers (the default targets, the pyramid laterals); on a CNN trunk those
    layers do not exist, so the ViT defaults become the trunk's residual convs.
    """
    spec = spec or LoraSpec()
    cfg = getattr(encoder, "config", None)
    if getattr(cfg, "architecture", "vit") != "cnn":
        return spec
    targets = spec.targets if spec.targets != DEFAULT_TARGETS else cnn_lora_targets(cfg)
    return replace(spec, targets=tuple(targets), include_pyramid=False, include_patch_embed=False)


@dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how much.

    Attributes:
        r: rank of each update ``ΔW = B A`` (``A``: r × in, ``B``: out × r).
        alpha: scaling numerator, the update is ``(alpha / r) · B A`` (peft's ``lora_alpha``).
        dropout: dropout on the LoRA branch input.
        targets: module-name suffixes (peft ``target_modules``); ``()`` with no ``include_*`` means
            no LoRA at all: only ``modules_to_save`` train (the dense "linear probe").
        include_patch_embed: also adapt the patch embedding Conv3d (``patch_embed.proj``): useful when
            the new data's intensities differ from pretraining (another modality, sequence).
        include_pyramid: also adapt the pyramid's 1×1 ``lateral`` convs (Conv3d): cheap, and they are
            the only trainable route into the pyramid when MAE pretraining left it untrained.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    include_patch_embed: bool = False
    include_pyramid: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"LoRA rank r must be >= 1, got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        object.__setattr__(self, "targets", tuple(self.targets))

    def target_modules(self) -> list[str]:
        """peft ``target_modules`` (suffix match), empty for a head-only adapter."""
        names = list(self.targets)
        if self.include_patch_embed:
            names.append("patch_embed.proj")
        if self.include_pyramid:
            names.extend(PYRAMID_TARGETS)
        return names

    def to_peft_config(self, modules_to_save: Sequence[str] = ("head",), *, task_type: str | None = None) -> Any:
        """A peft ``LoraConfig``; no targets → peft's dummy target (only ``modules_to_save`` train).

        ``task_type``: peft's (``"CAUSAL_LM"`` for an LLM, so the saved config is what vLLM expects).
        """
        from peft import LoraConfig
        from peft.utils.constants import DUMMY_TARGET_MODULES

        targets = self.target_modules()
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets if targets else DUMMY_TARGET_MODULES,
            modules_to_save=list(modules_to_save) or None,
            bias="none",
            task_type=task_type,
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (``radfm_adapter.json``'s ``lora``)."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d
