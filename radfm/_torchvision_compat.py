"""Make torchvision importable beside a CPU torch whose build it was not compiled against.

Why: PyPI's torchvision 0.28 cannot register its compiled ops next to torch 2.13.0+cpu and
fails at import with ``operator torchvision::nms does not exist``. transformers, peft
and segment-anything import torchvision when it is installed, so they would all fail. Defining the two
op schemas it looks up before its first import lets it load; its compiled ops (nms,
roi_align, video decoders) stay unavailable, and radfm does not use them.

This is the only place that works around it (see docs/install.md). It does nothing when
torchvision is absent, already imported, or imports cleanly on its own.
"""

from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keep the Library alive: dropping it would unregister the schemas


def install() -> None:
    """Register torchvision's missing op schemas if, and only if, they are missing."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is None:
        return
    import torch

    if hasattr(torch.ops, "torchvision") and _has_op("nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        lib.define(schema)
    _library = lib


def _has_op(name: str) -> bool:
    try:
        getattr(torch_ops_torchvision(), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def torch_ops_torchvision():  # pragma: no cover - trivial accessor
    import torch

    return torch.ops.torchvision
