"""radfm: open radiology foundation models (shared 3D encoder, adapters, task heads).

The public API re-exported here is the stable surface: load a study, check it, and write
results back in the study's own space. Tasks live in ``radfm.tasks.<task>``, adapters in
``radfm.adapters`` and metrics/benchmarks in ``radfm.eval``. Names are imported lazily so
``radfm --help`` stays fast.
"""

from __future__ import annotations

from radfm import _torchvision_compat
from radfm._lazy import lazy_getattr

_torchvision_compat.install()  # before anything imports transformers / peft

__version__ = "0.1.0"

_EXPORTS = {
    "Volume": "radfm.io",
    "load_volume": "radfm.io",
    "save_like": "radfm.io",
    "CheckReport": "radfm.check",
    "check_path": "radfm.check",
    "check_volume": "radfm.check",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
