"""What radfm records about the adapters of one PeftModel, and the argument checks that go with it.

Why: peft's config knows nothing of heads, classes or base encoders; radfm keeps those facts on the
PeftModel itself (a plain attribute, never a parameter, so peft never saves it) for save and merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.errors import InputError

__all__ = ["REGISTRY_ATTR", "adapter_meta", "registry", "require_adapter", "require_peft"]

#: The PeftModel attribute that holds the registry (:func:`radfm.adapters.merging.merge` keeps it out of copies).
REGISTRY_ATTR = "_radfm_registry"


@dataclass
class _Registry:
    """radfm facts about the adapters of one PeftModel (peft's config knows nothing of heads)."""

    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def registry(peft_model: nn.Module) -> _Registry:
    """The registry of ``peft_model``, created empty on first use."""
    reg = getattr(peft_model, REGISTRY_ATTR, None)
    if reg is None:
        reg = _Registry()
        setattr(peft_model, REGISTRY_ATTR, reg)  # plain attribute: not a parameter, not saved by peft
    return reg


def adapter_meta(peft_model: nn.Module, name: str) -> dict[str, Any]:
    """radfm facts about adapter ``name`` (task, classes, head, base encoder) recorded so far."""
    return dict(registry(peft_model).meta.get(name, {}))


def require_peft(model: nn.Module) -> Any:
    """``model`` itself when it is a PeftModel; an InputError that says how to make one otherwise."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise InputError(f"expected a peft PeftModel, got {type(model).__name__}.",
                         "Wrap the model first with attach_lora(model, name, spec) or load_adapters(...).")
    return model


def require_adapter(peft_model: Any, name: str) -> None:
    """Refuse an adapter name that ``peft_model`` does not hold, listing the ones it does."""
    if name not in peft_model.peft_config:
        raise InputError(f"no adapter named {name!r}.", f"Loaded adapters: {sorted(peft_model.peft_config)}.")
