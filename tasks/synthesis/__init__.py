"""Image-to-image synthesis on the shared encoder: low-dose → full-dose CT (the first synthesis task).

Public API: :func:`synthesize` (a volume in, the synthesised volume on the input's grid out),
the model :class:`RadFMSynthesis` / :class:`RadFMSynthConfig`, training (:class:`SynthRecipe`,
:func:`run_recipe`, behind ``radfm train synthesis``) and the stated low-dose simulation in
:mod:`radfm.tasks.synthesis.lowdose_sim`. Names load lazily so that ``radfm --help`` stays cheap.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.tasks.synthesis.api": ["SynthResult", "synthesize", "load_model", "default_model_dir"],
    "radfm.tasks.synthesis.config": ["RadFMSynthConfig"],
    "radfm.tasks.synthesis.model": ["RadFMSynthesis", "save_synthesis"],
    "radfm.tasks.synthesis.recipe": ["SynthRecipe", "run_recipe"],
    "radfm.tasks.synthesis.lowdose_sim": ["LowDoseModel", "simulate_volume"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
