"""Adapters with their own task head: attach, add more, switch, on any :class:`HeadedTaskModel`.

Why a per-adapter head: tasks have different classes, and peft keeps a per-adapter copy of the
head (``modules_to_save``) but always copies the base head; :func:`fit_head` rebuilds the copy at
the adapter's size. Why a protocol and not the task's class: adapters sit below tasks and never
import them (the dense segmentation model of ``radfm.tasks.dense_segmentation`` is one such model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import nn

import radfm  # noqa: F401  (installs the torchvision shim before peft imports it)
from radfm.adapters.registry import registry, require_adapter, require_peft
from radfm.adapters.spec import LoraSpec, resolve_spec
from radfm.errors import ConfigError, InputError

__all__ = ["HeadedTaskModel", "add_adapter", "attach_lora", "fit_head", "headed_base", "new_head_meta",
           "use_adapter"]


@runtime_checkable
class HeadedTaskModel(Protocol):
    """A task model whose head peft copies per adapter: a shared ``encoder``, a ``head`` module, and
    the config fields (``head_fields``, integers on ``config``) that size the head.

    ``build_head(spec)`` returns a fresh head of the sizes in ``spec`` (an adapter for other classes).
    """

    head_fields: ClassVar[tuple[str, ...]]
    encoder: nn.Module
    head: nn.Module

    def head_spec(self) -> dict[str, int]: ...

    def build_head(self, spec: Mapping[str, int]) -> nn.Module: ...


def headed_base(model: nn.Module) -> HeadedTaskModel:
    """The :class:`HeadedTaskModel` that ``model`` is (or that a PeftModel wraps); InputError otherwise."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, HeadedTaskModel):
        raise InputError(
            f"expected a task model with a per-adapter head (HeadedTaskModel, e.g. RadFMForDenseSegmentation) "
            f"or a PeftModel around one, got {type(base).__name__}.",
            "Build it with RadFMForDenseSegmentation.from_encoder(encoder, num_classes) "
            "(radfm.tasks.dense_segmentation.model).",
        )
    return base


def _head_wrapper(peft_model: Any) -> Any:
    """peft's ``ModulesToSaveWrapper`` around the head, or None when the head is not saved per adapter."""
    from peft.utils.other import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    head = getattr(base, "head", None)
    return head if isinstance(head, ModulesToSaveWrapper) else None


def fit_head(peft_model: Any, name: str, spec: Mapping[str, int]) -> None:
    """Give adapter ``name`` a fresh head of size ``spec`` when it differs from the base head's."""
    base = peft_model.get_base_model()
    wrapper = _head_wrapper(peft_model)
    fields = base.head_fields
    if wrapper is None or name not in wrapper.modules_to_save:
        if any(int(spec[k]) != int(getattr(base.config, k)) for k in fields):
            raise ConfigError(
                f"adapter {name!r} needs a head {dict(spec)} but 'head' is not in its modules_to_save.",
                "Save task heads with modules_to_save=('head',).",
            )
        return
    if all(int(spec[k]) == int(getattr(base.config, k)) for k in fields):
        return
    head = base.build_head(spec)
    p = next(wrapper.original_module.parameters())
    wrapper.modules_to_save[name] = head.to(device=p.device, dtype=p.dtype)


def new_head_meta(peft_model: Any, spec: LoraSpec, modules_to_save: Sequence[str],
                  num_classes: int | None = None) -> dict[str, Any]:
    """The registry entry of a new adapter: its LoRA spec, head sizes and label names (defaults per class)."""
    base = peft_model.get_base_model()
    hs = base.head_spec()
    if num_classes is not None:
        hs["num_classes"] = int(num_classes)
    names = dict(base.config.id2label) if hs["num_classes"] == base.config.num_classes else {
        0: "background", **{i: f"class_{i}" for i in range(1, hs["num_classes"])}}
    return {"lora": spec.to_dict(), "modules_to_save": list(modules_to_save), "head": hs,
            "label_names": {int(k): str(v) for k, v in names.items()}}


def attach_lora(
    model: HeadedTaskModel,
    name: str,
    spec: LoraSpec | None = None,
    *,
    modules_to_save: Sequence[str] = ("head",),
) -> Any:
    """Wrap ``model`` with peft and add a first, trainable adapter ``name``; returns the PeftModel.

    The encoder's own weights are frozen (LoRA trains ``B A`` beside them); ``modules_to_save``
    (default the head) get a trainable per-adapter copy. ``model`` is modified in place (peft
    replaces the targeted layers) and is ``peft_model.get_base_model()`` afterwards.
    """
    from peft import get_peft_model

    base = headed_base(model)
    spec = resolve_spec(spec, getattr(base, "encoder", None))
    peft_model = get_peft_model(base, spec.to_peft_config(modules_to_save), adapter_name=name)
    registry(peft_model).meta[name] = new_head_meta(peft_model, spec, modules_to_save)
    return peft_model


def add_adapter(
    peft_model: Any,
    name: str,
    spec: LoraSpec | None = None,
    *,
    modules_to_save: Sequence[str] = ("head",),
    num_classes: int | None = None,
) -> None:
    """Add another trainable adapter ``name`` beside the loaded ones and make it the active one.

    ``num_classes``: classes of this adapter's head when they differ from the base head's (a new
    task); its head copy is then built fresh at that size.
    """
    peft_model = require_peft(peft_model)
    spec = resolve_spec(spec, getattr(peft_model.get_base_model(), "encoder", None))
    peft_model.add_adapter(name, spec.to_peft_config(modules_to_save))
    peft_model.set_adapter(name)
    base = peft_model.get_base_model()
    if num_classes is not None and num_classes != base.config.num_classes:
        if "head" not in modules_to_save:
            raise ConfigError("num_classes differs from the base head but 'head' is not in modules_to_save.")
        fit_head(peft_model, name, {**base.head_spec(), "num_classes": int(num_classes)})
        peft_model.set_adapter(name)  # marks the new head copy trainable
    registry(peft_model).meta[name] = new_head_meta(peft_model, spec, modules_to_save, num_classes=num_classes)


def use_adapter(peft_model: Any, name: str, *, trainable: bool = False) -> Any:
    """Make adapter ``name`` the active one (per request: cheap, no weights move); returns the model.

    ``trainable=False`` keeps every adapter frozen (serving); ``True`` unfreezes this one (training).
    """
    peft_model = require_peft(peft_model)
    require_adapter(peft_model, name)
    peft_model.set_adapter(name, inference_mode=not trainable)
    return peft_model
