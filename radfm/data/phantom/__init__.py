"""SIMULATED CT-like and MR-like 3D phantoms with exact labels, findings and reports.

Everything here is synthetic: geometric shapes with CT-like Hounsfield units or T1-like
relative MR intensities. Nothing comes from a patient. The phantoms exist so that every
task (prompt segmentation, detection, registration, report drafting) can be trained and
tested end to end on a machine without real data, with ground truth known exactly.

Why this design:
- Deterministic: one ``np.random.default_rng(seed)`` is split into independent streams
  (anatomy, lesions, noise, wording), so the same seed gives bit-identical image, labels,
  findings and report, and changing the lesions leaves the anatomy unchanged.
- Fast: shapes are evaluated in their bounding boxes only, smooth random fields are made
  by separable upsampling of a coarse grid (a few matrix products), so a 96³ case takes
  well under a second on two CPU cores.
- Anatomy is defined in coordinates normalised to the field of view (each axis [-1, 1]),
  so any shape/spacing shows the whole torso or head. Millimetre sizes (lesion diameters,
  findings) are measured on the grid, so they are self-consistent, but a small field of
  view gives a child-sized body.

Geometry: arrays are canonical RAS+ ``(X, Y, Z)``: axis 0 increases towards patient Right,
axis 1 towards Anterior, axis 2 towards Superior; the affine is diagonal (spacing) with the
volume centred on world (0, 0, 0) mm.

Label maps (fixed ids across cases; see ``TORSO_LABELS`` / ``HEAD_LABELS``): 0 background
(air), organs 1..N, and each lesion its own id N+1, N+2, ... (named "lesion 1", ...), so a
segmentation prompt can target one lesion and a Finding points at its voxels via
``label_id``. The organ-state label "pleural effusion" (torso) may be absent from a case.
"""


from __future__ import annotations

from radfm.data.phantom.canvas import smooth_noise
from radfm.data.phantom.generate import make_phantom
from radfm.data.phantom.measure import remeasure_findings
from radfm.data.phantom.spec import ABNORMALITIES, HEAD_LABELS, TORSO_LABELS, LesionSpec, PhantomCase

__all__ = [
    "ABNORMALITIES", "HEAD_LABELS", "TORSO_LABELS", "LesionSpec", "PhantomCase", "make_phantom",
    "remeasure_findings", "smooth_noise",
]
