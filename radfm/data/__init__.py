"""Data for radfm: SIMULATED phantoms (CT-like / MR-like volumes with exact labels, findings and
reports), known deformations for registration, dataset indexing and training patches.

Everything named ``phantom``/``simulated`` is synthetic and carries ``meta["simulated"] = True``.
Names are imported lazily so ``import radfm.data`` stays cheap (``datasets`` and ``torch`` load
only when a function needing them is used).
"""

from __future__ import annotations

from radfm._lazy import lazy_getattr

_EXPORTS = {
    "Finding": "radfm.data.findings",
    "FINDING_TYPES": "radfm.data.findings",
    "max_diameter_mm": "radfm.data.findings",
    "LesionSpec": "radfm.data.phantom",
    "PhantomCase": "radfm.data.phantom",
    "make_phantom": "radfm.data.phantom",
    "remeasure_findings": "radfm.data.phantom",
    "Report": "radfm.data.report_text",
    "ReportSentence": "radfm.data.report_text",
    "render_report": "radfm.data.report_text",
    "findings_mentioned": "radfm.data.report_text",
    "shared_data_root": "radfm.data.shared",
    "PhantomPair": "radfm.data.deform",
    "make_phantom_pair": "radfm.data.deform",
    "random_smooth_field": "radfm.data.deform",
    "warp": "radfm.data.deform",
    "field_canonical_to_model": "radfm.data.deform",
    "load_cases": "radfm.data.datasets",
    "load_case": "radfm.data.datasets",
    "phantom_dataset": "radfm.data.datasets",
    "PatchDataset": "radfm.data.patches",
    "sample_patch_centers": "radfm.data.patches",
    "extract_patch": "radfm.data.patches",
    "canonical_to_model": "radfm.data.patches",
    "model_to_canonical": "radfm.data.patches",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
