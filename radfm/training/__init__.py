"""Training loops of the core: self-supervised pretraining of the shared encoder (3D MAE).

``run_pretraining(PretrainConfig)`` is the public function; ``radfm pretrain -c recipe.yaml`` its
command. Names are imported lazily so ``radfm --help`` does not import torch/accelerate.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PretrainConfig": "radfm.training.pretrain",
    "ModelConfig": "radfm.training.pretrain",
    "DataConfig": "radfm.training.pretrain",
    "OptimConfig": "radfm.training.pretrain",
    "PretrainStream": "radfm.training.pretrain",
    "run_pretraining": "radfm.training.pretrain",
    "load_pretrain_config": "radfm.training.cli",
    "AugmentConfig": "radfm.training.augment",
    "augment_crop": "radfm.training.augment",
    "SourceSpec": "radfm.training.sources",
    "PACKAGE_VOLUMES": "radfm.training.sources",
    "find_package_volumes": "radfm.training.sources",
    "save_checkpoint": "radfm.training.checkpoint",
    "load_checkpoint": "radfm.training.checkpoint",
    "latest_checkpoint": "radfm.training.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'radfm.training' has no attribute {name!r}")
