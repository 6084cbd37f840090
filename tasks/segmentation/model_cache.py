"""One loaded segmenter per model folder and adapter, per process.

Why: loading a segmenter (config, safetensors, LoRA merge, calibration) costs far more than one
click, and ``/v1/segment`` used to pay it on every request; interactive sessions need the same
model for every click anyway. The cache is keyed by the resolved folder, the adapter folder and
the modification times of the files that define the model, so a model re-saved in place is
loaded afresh instead of being served stale. It holds at most :data:`MAX_MODELS` models (least
recently used dropped first). Models are shared between threads: they are only run in eval /
inference mode, which does not change them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

__all__ = ["MAX_MODELS", "clear_segmenters", "get_segmenter"]

MAX_MODELS = 4

_lock = threading.Lock()
_models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def _stamp(folder: Path | None) -> tuple[tuple[str, int], ...]:
    """``(name, mtime_ns)`` of the files directly in ``folder`` (config, weights, plan, calibration)."""
    if folder is None or not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def _key(model_dir: Path, adapter: Path | None) -> tuple[Any, ...]:
    adapter_dir = adapter if adapter is not None else model_dir / "adapter"
    return (str(model_dir), None if adapter is None else str(adapter), _stamp(model_dir), _stamp(adapter_dir))


def get_segmenter(model_dir: str | Path | None = None, *, adapter: str | Path | None = None) -> Any:
    """The segmenter of ``model_dir`` (default: the shipped one), loaded at most once per process.

    Same arguments and errors as :func:`radfm.tasks.segmentation.loading.load_segmenter`.
    Loading happens under a lock so concurrent first requests load the model once, not N times.
    """
    from radfm.tasks.segmentation.loading import default_model_dir, load_segmenter

    folder = Path(model_dir if model_dir is not None else default_model_dir()).resolve()
    adapter_dir = Path(adapter).resolve() if adapter is not None else None
    key = _key(folder, adapter_dir)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        # a re-saved folder: drop the stale entries of the same folder/adapter first
        for old in [k for k in _models if k[:2] == key[:2]]:
            del _models[old]
        model = load_segmenter(folder, adapter=adapter_dir)
        _models[key] = model
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return model


def clear_segmenters() -> None:
    """Forget every cached model (tests; freeing memory in a long-lived process)."""
    with _lock:
        _models.clear()
