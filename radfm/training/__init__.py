"""Training loops of the core: self-supervised pretraining of the shared encoder (3D MAE).

``run_pretraining(PretrainConfig)`` is the public function; ``radfm pretrain -c recipe.yaml`` its
command. Names are imported lazily so ``radfm --help`` does not import torch/accelerate.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.training.pretrain_recipe": ["PretrainConfig", "ModelConfig", "DataConfig", "OptimConfig"],
    "radfm.training.pretrain_data": ["PretrainStream"],
    "radfm.training.pretrain": ["run_pretraining"],
    "radfm.training.cli": ["load_pretrain_config"],
    "radfm.training.augment": ["AugmentConfig", "augment_crop"],
    "radfm.training.sources": ["SourceSpec", "PACKAGE_VOLUMES", "find_package_volumes"],
    "radfm.training.checkpoint": ["save_checkpoint", "load_checkpoint", "latest_checkpoint"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
