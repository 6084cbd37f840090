"""Training objects for prompt segmentation: real labels, pseudo-masks, inserted shapes, phantoms.

Why four kinds (a SAM-style data engine on what this machine holds):

- **real labels** (the training split of ``REAL_CASES``): anatomy as radiologists outline it;
- **pseudo-masks** on every real volume of the training split: connected regions of one intensity
  class (k-means on the smoothed image), so the model learns to stop at image borders for
  objects nobody labelled;
- **inserted shapes** (cubes, tori, L-shapes, tubes, blobs) with random contrast, texture and edge
  blur, written into real and phantom backgrounds: a click must give the shape, not a ball;
- **phantoms** (``radfm.data.phantom``): simulated CT/MR anatomy with exact labels.

Splits are by subject and written down in ``REAL_CASES``: the benchmark volumes (TotalSegmentator
``example_ct``, the FreeSurfer brain, ``lung2``) are never read for training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from radfm.errors import InputError
from radfm.io import load_volume
from radfm.preprocess.plan import PreprocessPlan

__all__ = [
    "CLASS_VOCABULARY",
    "REAL_CASES",
    "RealCase",
    "canonical_class_name",
    "insert_shape",
    "load_real_cases",
    "pseudo_mask_labels",
    "shape_mask",
    "textured_background",
]

log = logging.getLogger(__name__)

#: Names a class prompt understands (the structures with training labels on real CT and phantoms).
CLASS_VOCABULARY: tuple[str, ...] = (
    "liver", "spleen", "left kidney", "right kidney", "aorta", "stomach", "heart", "left lung", "right lung",
    "pancreas", "spine", "white matter", "gray matter", "ventricles",
)


def canonical_class_name(name: str) -> str | None:
    """Map a dataset's label name (TotalSegmentator, phantom, FreeSurfer-like) onto ``CLASS_VOCABULARY``."""
    n = name.lower().replace("_", " ").strip()
    direct = {"kidney left": "left kidney", "kidney right": "right kidney", "csf": None}
    if n in direct:
        return direct[n]
    if n.startswith("lung") and n.endswith("left"):
        return "left lung"
    if n.startswith("lung") and n.endswith("right"):
        return "right lung"
    if n.startswith("vertebrae") or n == "spine":
        return "spine"
    return n if n in CLASS_VOCABULARY else None


@dataclass(frozen=True)
class RealCase:
    """A real labelled (or unlabelled) volume of ``../shared/data`` or a system package.

    ``label`` = path of the label map (``None``: pseudo-masks only); ``names`` = label id → name
    (``None``: every id is a target called "label N"); ``split`` = "train" or "test" (by subject).
    """

    case_id: str
    image: str
    label: str | None
    names: str | None
    split: str
    modality: str | None = None


_TS = "seg3d/totalsegmentator"
_PR = "seg3d/pyradiomics"
_MRICRON = "/usr/share/mricron/templates"
#: Every real volume used, with its split. "test" volumes are for the benchmark only.
REAL_CASES: tuple[RealCase, ...] = (
    RealCase("ts_dicom_ct", f"{_TS}/example_ct_dicom", f"{_TS}/example_seg_dicom.nii.gz", "totalseg", "train", "CT"),
    RealCase("ts_aorta_ct", f"{_TS}/aorta_ct_cropped.nii.gz", f"{_TS}/aorta_aorta.nii.gz", "aorta", "train", "CT"),
    RealCase("lung1_ct", f"{_PR}/lung1_image.nrrd", f"{_PR}/lung1_label.nrrd", "lung tumour", "train", "CT"),
    RealCase("brain1_mr", f"{_PR}/brain1_image.nrrd", f"{_PR}/brain1_label.nrrd", "brain tumour", "train", "MR"),
    RealCase("breast1_mr", f"{_PR}/breast1_image.nrrd", f"{_PR}/breast1_label.nrrd", "breast lesion", "train", "MR"),
    RealCase("prostate_phantom_mr", f"{_PR}/prostate_phantom_subvolume.nrrd",
             f"{_PR}/prostate_phantom_subvolume-label.nrrd", None, "train", "MR"),
    RealCase("colin27_aal_mr", f"{_MRICRON}/ch2.nii.gz", f"{_MRICRON}/aal.nii.gz", None, "train", "MR"),
    RealCase("mni152_mr", "registration/mni_icbm152_2009a", None, None, "train", "MR"),
    # held out (benchmark only): other subjects
    RealCase("ts_example_ct", f"{_TS}/example_ct.nii.gz", f"{_TS}/example_seg.nii.gz", "totalseg", "test", "CT"),
    RealCase("lung2_ct", f"{_PR}/lung2_image.nrrd", f"{_PR}/lung2_label.nrrd", "lung tumour", "test", "CT"),
    RealCase("freesurfer_brain_mr", "seg3d/voxelmorph_brain/test_scan_uint8.npz", "freesurfer", "freesurfer",
             "test", "MR"),
)


def _resolve(path: str, root: Path | None) -> Path | None:
    p = Path(path)
    if p.is_absolute():
        return p if p.exists() else None
    if root is None:
        return None
    p = root / path
    if p.is_dir() and any(p.glob("*.nii*")):  # a folder of NIfTI files (a template): take its T1
        t1 = sorted(q for q in p.glob("*.nii*") if "t1" in q.name.lower() and "mask" not in q.name.lower())
        return t1[0] if t1 else None
    return p if p.exists() else None


def _names(kind: str | None, root: Path | None) -> dict[int, str] | None:
    import json

    if kind == "totalseg" and root is not None:
        return {int(k): v for k, v in json.loads((root / _TS / "label_names.json").read_text())["class_map_total"].items()}
    if kind == "freesurfer" and root is not None:
        raw = json.loads((root / "seg3d/voxelmorph_brain/freesurfer_label_names.json").read_text())
        return {int(k): str(v) for k, v in raw.items()}
    if kind in ("aorta", "lung tumour", "brain tumour", "breast lesion"):
        return {1: kind}
    return None


def load_real_cases(plan: PreprocessPlan, *, split: str, root: Path | None, pseudo: bool = True,
                    seed: int = 0, only: Sequence[str] | None = None) -> list:
    """``TrainCase``s of the real volumes of one split (those found on this machine; the rest skipped).

    Each case carries its real labels (ids < 10000) and, with ``pseudo``, pseudo-mask regions
    (ids ≥ 10000, named "region"), computed on the model grid.
    """
    from radfm.tasks.segmentation.cases import prepare_case

    rng = np.random.default_rng(seed)
    out = []
    for rc in REAL_CASES:
        if rc.split != split or (only is not None and rc.case_id not in only):
            continue
        img_path = _resolve(rc.image, root)
        if img_path is None:
            log.info("real case %s not found; skipped", rc.case_id)
            continue
        image = load_volume(img_path, modality=rc.modality)
        if rc.label == "freesurfer":
            data = np.load(img_path)
            lab = np.asarray(data["seg"]).astype(np.int16)
            if lab.shape != image.shape:
                raise InputError(f"{rc.case_id}: label grid {lab.shape} vs image {image.shape}.")
        elif rc.label is not None:
            lab_path = _resolve(rc.label, root)
            if lab_path is None:
                continue
            lab_vol = load_volume(lab_path)
            lab = np.rint(lab_vol.array).astype(np.int32)
            if lab.shape != image.shape:
                log.warning("%s: label grid %s differs from image %s; skipped", rc.case_id, lab.shape, image.shape)
                continue
            vals = np.unique(lab)
            if vals.max() > 30000:  # relabel (AAL codes such as 2001) compactly
                lut = {int(v): i for i, v in enumerate(vals)}
                lab = np.vectorize(lut.get)(lab)
            lab = lab.astype(np.int16)
        else:
            lab = np.zeros(image.shape, np.int16)
        names = _names(rc.names, root)
        case = prepare_case(image, lab, names, plan, case_id=rc.case_id)
        if pseudo:
            regions = pseudo_mask_labels(case.image[0].numpy(), rng)
            free = case.labels == 0
            case.labels = np.where(free & (regions > 0), regions + 10000, case.labels).astype(np.int32)
            for r in np.unique(regions[free & (regions > 0)]):
                case.targets[int(r) + 10000] = "region"
        out.append(case)
    return out


# ----------------------------------------------------------------------------- pseudo-masks
def pseudo_mask_labels(image: np.ndarray, rng: np.random.Generator, *, min_voxels: int = 40,
                       max_fraction: float = 0.15) -> np.ndarray:
    """Intensity-homogeneous connected regions of a ``(D, H, W)`` normalised image (int32, 0 = none).

    The smoothed image is split into ``k`` intensity classes (1D k-means on its values, ``k`` from
    3 to 6 at random), each class into 6-connected components after a one-voxel opening (which cuts
    thin bridges); components of ``min_voxels`` up to ``max_fraction`` of the volume are kept
    (15 %: organ-sized homogeneous regions too, so that a click also learns to fill a large object).
    """
    sm = ndimage.gaussian_filter(image.astype(np.float32), float(rng.uniform(0.6, 1.2)))
    k = int(rng.integers(3, 7))
    vals = sm[::2, ::2, ::2].ravel()
    centres = np.quantile(vals, np.linspace(0.05, 0.95, k))
    for _ in range(8):
        assign = np.abs(vals[:, None] - centres[None]).argmin(1)
        centres = np.array([vals[assign == i].mean() if np.any(assign == i) else centres[i] for i in range(k)])
    edges = (np.sort(centres)[1:] + np.sort(centres)[:-1]) / 2
    classes = np.digitize(sm, edges)
    out = np.zeros(image.shape, np.int32)
    nxt = 1
    limit = max_fraction * image.size
    for c in range(k):
        m = ndimage.binary_opening(classes == c, iterations=1)
        comps, n = ndimage.label(m)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())
        for i in np.flatnonzero((sizes >= min_voxels) & (sizes <= limit)):
            if i == 0:
                continue
            out[comps == i] = nxt
            nxt += 1
    return out


# ----------------------------------------------------------------------------- inserted shapes
SHAPES = ("ellipsoid", "cube", "torus", "L", "tube", "blob", "shell")


def shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask of one shape in a cube of ``size`` voxels, randomly proportioned and rotated."""
    n = int(size)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    a = rng.uniform(0.5, 1.0, 3)
    if kind == "ellipsoid":
        m = (z / a[0]) ** 2 + (y / a[1]) ** 2 + (x / a[2]) ** 2 <= 1
    elif kind == "cube":
        m = (np.abs(z) <= a[0] * 0.9) & (np.abs(y) <= a[1] * 0.9) & (np.abs(x) <= a[2] * 0.9)
    elif kind == "torus":
        r, t = rng.uniform(0.45, 0.65), rng.uniform(0.18, 0.3)
        m = (np.sqrt(y**2 + x**2) - r) ** 2 + (z / max(a[0], 0.6)) ** 2 <= t**2
    elif kind == "L":
        w = rng.uniform(0.25, 0.45)
        m = ((np.abs(z) <= 0.9) & (y >= -0.9) & (y <= -0.9 + 2 * w) & (np.abs(x) <= w)) | (
            (z >= 0.9 - 2 * w) & (z <= 0.9) & (y >= -0.9) & (y <= 0.9) & (np.abs(x) <= w))
    elif kind == "tube":
        r = rng.uniform(0.15, 0.35)
        bend = rng.uniform(-0.5, 0.5)
        m = ((y - bend * z**2) ** 2 + x**2 <= r**2) & (np.abs(z) <= 0.9)
    elif kind == "shell":
        rr = np.sqrt(z**2 + y**2 + x**2)
        m = (rr <= 0.9) & (rr >= rng.uniform(0.5, 0.7))
    else:  # blob: thresholded smooth noise inside a ball
        noise = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), n / 6)
        m = (noise > np.quantile(noise, 0.6)) & (z**2 + y**2 + x**2 <= 1)
        comps, k = ndimage.label(m)
        if k:
            m = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1)
    if kind not in ("cube", "L") or rng.random() < 0.5:  # cubes and Ls also appear axis-aligned
        for axes in ((0, 1), (1, 2), (0, 2)):
            m = ndimage.rotate(m.astype(np.float32), float(rng.uniform(-60, 60)), axes=axes, reshape=False,
                               order=1) > 0.5
    return m


def insert_shape(image: torch.Tensor, rng: np.random.Generator, *, size_range: tuple[int, int] = (8, 30),
                 kind: str | None = None, centre: Sequence[int] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Write one random shape into ``image`` ``(C, D, H, W)`` (normalised); returns (new image, bool mask).

    Contrast: the shape's mean differs from its surroundings by 0.3–0.9 normalised units and at
    least twice their spread (either sign, kept inside the intensity range), with its own texture
    and a 0.3–1 voxel edge blur: borders are visible but not trivially sharp. An invisible
    inserted object would teach the model to answer without the image.
    """
    kind = kind or str(rng.choice(SHAPES))
    d, h, w = image.shape[1:]
    size = int(rng.integers(size_range[0], min(size_range[1], min(d, h, w) - 2) + 1))
    m = shape_mask(kind, size, rng)
    if not m.any():
        m = shape_mask("ellipsoid", size, rng)
    if centre is None:
        centre = [int(rng.integers(size // 2, max(size // 2 + 1, s - size // 2))) for s in (d, h, w)]
    lo = [int(c) - size // 2 for c in centre]
    full = np.zeros((d, h, w), bool)
    src = tuple(slice(max(0, -o), min(size, s - o)) for o, s in zip(lo, (d, h, w)))
    dst = tuple(slice(max(0, o), min(s, o + size)) for o, s in zip(lo, (d, h, w)))
    full[dst] = m[src]
    if not full.any():
        return image, full
    img = image.clone()
    ring = ndimage.binary_dilation(full, iterations=3) & ~full
    around = img[0][torch.from_numpy(ring)] if ring.any() else img[0].flatten()
    base, spread = float(around.mean()), float(around.std())
    # Visible by construction: the step is at least 0.3 and twice the surroundings' spread, and its
    # sign keeps the shape inside the intensity range (a dark shape on air would be invisible).
    step = max(float(rng.uniform(0.3, 0.9)), 2.0 * spread)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if base - step < -1.1:
        sign = 1.0
    elif base + step > 1.3:
        sign = -1.0
    target = base + sign * step
    soft = ndimage.gaussian_filter(full.astype(np.float32), float(rng.uniform(0.3, 1.0)))
    tex = ndimage.gaussian_filter(rng.standard_normal((d, h, w)).astype(np.float32), 1.0) * rng.uniform(0.0, 0.3) * step
    alpha = torch.from_numpy(soft)
    for c in range(img.shape[0]):
        img[c] = img[c] * (1 - alpha) + (target + torch.from_numpy(tex)) * alpha
    return img, full


def textured_background(shape: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
    """A ``(1, D, H, W)`` SIMULATED background: smooth multi-scale texture plus a random gradient.

    For tests and for training without any volume: objects inserted into it are defined by their
    intensity borders only (no anatomy to memorise).
    """
    d, h, w = (int(v) for v in shape)
    x = np.zeros((d, h, w), np.float32)
    for sigma, amp in ((1.0, 0.05), (3.0, 0.6), (8.0, 1.5)):
        x += ndimage.gaussian_filter(rng.standard_normal((d, h, w)).astype(np.float32), sigma) * amp * sigma
    x /= max(float(x.std()), 1e-6) * 4.0
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in (d, h, w)], indexing="ij")
    g = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
    return torch.from_numpy(np.clip(x + g[0] * zz + g[1] * yy + g[2] * xx, -1.0, 1.0))[None]


# ----------------------------------------------------------------------------- crops and augmentation
def random_crop(image: torch.Tensor, labels: np.ndarray, size: Sequence[int], centre: Sequence[float],
                rng: np.random.Generator, *, zoom: float = 1.0) -> tuple[torch.Tensor, np.ndarray]:
    """A crop of ``size`` model voxels around ``centre`` (jittered), resampled by ``zoom`` (scale aug).

    ``zoom`` > 1 takes a larger field of view into the same size (objects appear smaller). Outside
    the volume the image is padded with its minimum and the labels with 0.
    """
    src = [max(4, round(s * zoom)) for s in size]
    lo = [round(c - s / 2 + rng.uniform(-0.3, 0.3) * s) for c, s in zip(centre, src)]
    shape = image.shape[1:]
    pads = [(max(0, -o), max(0, o + s - n)) for o, s, n in zip(lo, src, shape)]
    sl = tuple(slice(max(0, o), min(n, o + s)) for o, s, n in zip(lo, src, shape))
    img = image[(slice(None), *sl)]
    lab = labels[sl]
    if any(p for pair in pads for p in pair):
        flat = [v for pair in reversed(pads) for v in pair]
        img = F.pad(img, flat, value=float(image.min()))
        lab = np.pad(lab, pads)
    if tuple(src) != tuple(size):
        img = F.interpolate(img[None].float(), size=tuple(size), mode="trilinear", align_corners=False)[0]
        lab_t = torch.from_numpy(lab.astype(np.int32)).float()[None, None]
        lab = F.interpolate(lab_t, size=tuple(size), mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return img.float(), lab


def augment_intensity(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Contrast, gamma, bias field, blur / low resolution and noise (each with some probability)."""
    x = img.clone()
    if rng.random() < 0.8:
        x = x * rng.uniform(0.85, 1.25) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.4:
        lo, hi = float(x.min()), float(x.max())
        u = ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1) ** float(np.exp(rng.uniform(-0.5, 0.5)))
        x = u * (hi - lo) + lo
    if rng.random() < 0.4:
        field = torch.from_numpy(rng.standard_normal((1, 1, 3, 3, 3)).astype(np.float32)) * 0.15
        field = F.interpolate(field, size=x.shape[1:], mode="trilinear", align_corners=True)[0]
        x = x * torch.exp(field)
    if rng.random() < 0.25:
        f = float(rng.uniform(1.3, 2.2))
        small = [max(4, round(s / f)) for s in x.shape[1:]]
        x = F.interpolate(F.interpolate(x[None], size=small, mode="trilinear", align_corners=False),
                          size=tuple(x.shape[1:]), mode="trilinear", align_corners=False)[0]
    if rng.random() < 0.5:
        x = x + torch.randn_like(x) * float(rng.uniform(0.0, 0.08))
    if rng.random() < 0.08:
        x = -x
    return x
