"""The phantom entry point: ``make_phantom`` and the generator that also returns the clean image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from radfm.data.phantom.anatomy import _head, _torso
from radfm.data.phantom.canvas import _Canvas, _Grid, smooth_noise
from radfm.data.phantom.lesions import _place_lesions, _random_lesions
from radfm.data.phantom.measure import _findings
from radfm.data.phantom.render import _acquire, _Acquisition, _draw_acquisition, _render
from radfm.data.phantom.spec import (
    ABNORMALITIES,
    HEAD_LABELS,
    TORSO_LABELS,
    LesionSpec,
    PhantomCase,
)
from radfm.data.report_text import HEAD_ORGANS, TORSO_ORGANS, render_report
from radfm.errors import InputError
from radfm.io.volume import Volume

# --- the public entry point ------------------------------------------------------------

def make_phantom(
    seed: int,
    *,
    modality: Literal["CT", "MR"] = "CT",
    shape: tuple[int, int, int] = (96, 96, 96),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
    n_lesions: int | None = None,
    lesions: list[LesionSpec] | None = None,
    noise: float | None = None,
    blur_mm: float | None = None,
    body: Literal["chest_abdomen", "head"] = "chest_abdomen",
    abnormalities: Sequence[str] | None = None,
) -> PhantomCase:
    """Generate one SIMULATED study (image, labels, findings, report), deterministic in ``seed``.

    Args:
        seed: the only source of randomness (``np.random.default_rng(seed)``).
        modality: "CT" (Hounsfield units) or "MR" (T1-like, arbitrary positive units with a
            smooth bias field and Rician noise).
        shape, spacing: canonical ``(X, Y, Z)`` voxels and mm per voxel.
        n_lesions: number of random lesions (``None``: 0-3 drawn from the seed). Ignored when
            ``lesions`` is given.
        lesions: explicit lesions, placed in order (ids ``first_lesion_id + index``).
        noise: CT: Gaussian noise std in HU; MR: Rician noise std relative to the brightest
            tissue (fat = ~1). ``None``: drawn from the seed (CT torso 6-18 HU, head 3-8 HU; MR
            0.015-0.04).
        blur_mm: Gaussian std in mm simulating the point-spread function (partial volume).
            ``None``: drawn from the seed (about half a voxel); 0 disables.
        body: "chest_abdomen" (torso) or "head".
        abnormalities: organ states to include, from ``ABNORMALITIES`` (torso only). ``None``:
            each drawn from the seed with probability ~0.15; ``()``: none.

    Returns:
        A ``PhantomCase``; ``case.image.meta["simulated"] is True``.
    """
    return _generate(
        seed, modality=modality, shape=shape, spacing=spacing, n_lesions=n_lesions, lesions=lesions,
        noise=noise, blur_mm=blur_mm, body=body, abnormalities=abnormalities,
    )[0]


def _generate(seed: int, *, modality: Literal["CT", "MR"], shape: tuple[int, int, int],
              spacing: tuple[float, float, float], n_lesions: int | None, lesions: list[LesionSpec] | None,
              noise: float | None, blur_mm: float | None, body: Literal["chest_abdomen", "head"],
              abnormalities: Sequence[str] | None) -> tuple[PhantomCase, np.ndarray, _Acquisition]:
    """``make_phantom`` plus the noise-free image and acquisition (for deformed pairs).

    No defaults here: ``make_phantom``'s signature is the one place that holds them.
    """
    modality = modality.upper()  # type: ignore[assignment]
    if modality not in ("CT", "MR"):
        raise InputError(f"phantom modality {modality!r} is not supported.", "Use 'CT' or 'MR'.")
    if body not in ("chest_abdomen", "head"):
        raise InputError(f"phantom body {body!r} is not supported.", "Use 'chest_abdomen' or 'head'.")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape {shape} is too small.", "Use three sizes of at least 8 voxels.")
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if abnormalities is not None:
        unknown = set(abnormalities) - set(ABNORMALITIES)
        if unknown:
            raise InputError(f"unknown abnormalities {sorted(unknown)}.", f"Use some of {list(ABNORMALITIES)}.")

    anat_rng, lesion_rng, noise_rng, text_rng = np.random.default_rng(seed).spawn(4)
    g = _Grid(shape, spacing)  # type: ignore[arg-type]
    fields = smooth_noise(shape, (np.asarray(shape) / 6.0).clip(2.0, None), anat_rng, channels=1)
    cv = _Canvas(g, anat_rng, fields[0])

    # Abnormal organ states are drawn even when given, so the anatomy stream stays aligned.
    draws = anat_rng.random(len(ABNORMALITIES))
    if body == "head":
        abnormal: set[str] = set()
    elif abnormalities is None:
        abnormal = {a for a, r in zip(ABNORMALITIES, draws) if r < 0.15}
    else:
        abnormal = set(abnormalities)
    info = _torso(cv, abnormal, anat_rng) if body == "chest_abdomen" else {}
    if body == "head":
        _head(cv, anat_rng)
    organ_names = TORSO_LABELS if body == "chest_abdomen" else HEAD_LABELS
    first_id = max(organ_names) + 1

    if lesions is None:
        n = int(lesion_rng.integers(0, 4)) if n_lesions is None else int(n_lesions)
        specs = _random_lesions(body, n, g, cv, lesion_rng)
    else:
        specs = list(lesions)
    if first_id + len(specs) > 255:
        raise InputError(f"{len(specs)} lesions do not fit a uint8 label map.", "Use at most 200 lesions.")
    placed = _place_lesions(cv, specs, modality, first_id, lesion_rng, head=body == "head")

    clean, blur = _render(cv, modality, body, placed, blur_mm, anat_rng, noise_rng)
    acq = _draw_acquisition(modality, noise, g, noise_rng, head=body == "head")
    image = _acquire(clean, acq, noise_rng)
    labels = cv.labels
    label_names = dict(organ_names)
    for p in placed:
        label_names[p.label_id] = f"lesion {p.label_id - first_id + 1}"

    findings = _findings(labels, placed, abnormal, info, body, g)
    organs = HEAD_ORGANS if body == "head" else TORSO_ORGANS
    report = render_report(findings, rng=text_rng, organs_examined=organs, modality=modality)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    meta = {"simulated": True, "generator": "radfm.data.phantom", "seed": int(seed), "body": body}
    case = PhantomCase(
        image=Volume(image, affine, modality=modality, meta={**meta, "noise": acq.sd, "blur_mm": blur}),
        labels=Volume(labels, affine.copy(), modality="unknown", meta={**meta, "kind": "labels"}),
        label_names=label_names,
        findings=findings,
        report=report,
        seed=int(seed),
    )
    return case, clean, acq


