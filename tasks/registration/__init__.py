"""Deformable registration: dense and diffeomorphic displacement fields on the shared encoder.

Public API: :func:`register` (volumes in, warped volume + field in mm out), :func:`propagate_labels`
(4D label propagation), training (:class:`RegRecipe` and :func:`run_recipe`, the
function behind ``radfm train registration``), the model :class:`RadFMRegistration` / :class:`RadFMRegConfig`, and the
pure field functions in :mod:`radfm.tasks.registration.functional`. Names load lazily so that
``radfm --help`` does not import torch models.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.tasks.registration.api": ["RegResult", "register", "load_model", "default_model_dir"],
    "radfm.tasks.registration.propagate": ["propagate_labels"],
    "radfm.tasks.registration.config": ["RadFMRegConfig"],
    "radfm.tasks.registration.model": ["RadFMRegistration", "save_registration"],
    "radfm.tasks.registration.recipe": ["RegRecipe", "run_recipe"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
