"""Data for radfm: SIMULATED phantoms (CT-like / MR-like volumes with exact labels, findings and
reports), known deformations for registration, dataset indexing and training patches.

Everything named ``phantom``/``simulated`` is synthetic and carries ``meta["simulated"] = True``.
Names are imported lazily so ``import radfm.data`` stays cheap (``datasets`` and ``torch`` load
only when a function needing them is used).
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.data.findings": ["Finding", "FINDING_TYPES", "max_diameter_mm"],
    "radfm.data.phantom": ["LesionSpec", "PhantomCase", "make_phantom", "remeasure_findings"],
    "radfm.data.report_text": ["Report", "ReportSentence", "render_report", "findings_mentioned"],
    "radfm.data.shared": ["shared_data_root"],
    "radfm.data.deform": [
        "PhantomPair", "make_phantom_pair", "random_smooth_field", "warp", "field_canonical_to_model",
    ],
    "radfm.data.datasets": ["load_cases", "load_case", "phantom_dataset"],
    "radfm.data.patches": [
        "PatchDataset", "sample_patch_centers", "extract_patch", "canonical_to_model", "model_to_canonical",
    ],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
