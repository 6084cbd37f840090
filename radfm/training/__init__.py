"""Training loops of the core: self-supervised pretraining of the shared encoder (3D MAE).

``run_pretraining(PretrainConfig)`` is the public function; ``radfm pretrain -c recipe.yaml`` its
command. Names are imported lazily so ``radfm --help`` does not import torch/accelerate.
"""

from __future__ import annotations

from radfm._lazy import lazy_getattr

_EXPORTS = {
    "PretrainConfig": "radfm.training.pretrain_recipe",
    "ModelConfig": "radfm.training.pretrain_recipe",
    "DataConfig": "radfm.training.pretrain_recipe",
    "OptimConfig": "radfm.training.pretrain_recipe",
    "PretrainStream": "radfm.training.pretrain_data",
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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
