"""Patch sampling for training.

Axis order: radfm volumes are canonical RAS+ ``(X, Y, Z)`` (``Volume.array``, channels last:
``(X, Y, Z, C)``); models take ``(C, D, H, W)`` with ``(D, H, W) = (z, y, x)``. The conversion is
a transpose, ``canonical_to_model`` / ``model_to_canonical``, defined with the rest of the
geometry in ``radfm.preprocess.geometry`` (re-exported here); every other module should call
these instead of transposing by hand (a hand-written transpose that is its own inverse for
cubes hides bugs until the first non-cubic scan). Displacement fields also need their channel
order reversed: ``radfm.data.deform.field_canonical_to_model``.

Sampling follows nnU-Net: a fixed fraction of patches is centred on a foreground voxel (class
first, then voxel, so small structures are not drowned by large ones), the rest anywhere;
volumes smaller than the patch are padded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from radfm.errors import InputError
from radfm.preprocess.geometry import canonical_to_model, model_to_canonical

__all__ = ["PatchDataset", "canonical_to_model", "extract_patch", "model_to_canonical", "sample_patch_centers"]


def _center_range(dim: int, size: int) -> tuple[int, int]:
    """Inclusive range of centres whose patch ``[c - size//2, c - size//2 + size)`` stays inside
    the volume (or, when the volume is smaller, contains it)."""
    a, b = size // 2, dim - size + size // 2
    return min(a, b), max(a, b)


def sample_patch_centers(
    label: np.ndarray | None,
    patch_size: Sequence[int],
    n: int,
    *,
    fg_fraction: float = 0.33,
    rng: np.random.Generator,
    shape: Sequence[int] | None = None,
    max_voxels_per_class: int = 10_000,
) -> np.ndarray:
    """``(n, 3)`` int64 patch centres, in the label's own axes.

    A patch with centre ``c`` covers ``[c - p // 2, c - p // 2 + p)`` along each axis (see
    ``extract_patch``). About ``fg_fraction * n`` centres (stochastically rounded, so the
    expected fraction is exact even for n = 1) are foreground: a random present class > 0,
    then a random voxel of it (at most ``max_voxels_per_class`` kept per class, like nnU-Net),
    moved inwards so the patch stays inside the volume when it can. The others are uniform.
    With an empty (or ``None``) label every centre is uniform; ``shape`` is then needed if
    ``label`` is ``None``.
    """
    if label is None and shape is None:
        raise InputError("sample_patch_centers needs a label or a shape.")
    dims = tuple(int(d) for d in (label.shape if label is not None else shape))  # type: ignore[union-attr]
    ps = tuple(int(p) for p in patch_size)
    if len(dims) != 3 or len(ps) != 3:
        raise InputError(f"expected a 3D label and a 3D patch size, got {dims} and {ps}.")
    ranges = [_center_range(d, p) for d, p in zip(dims, ps)]
    n_fg = int(np.floor(n * fg_fraction))
    n_fg += int(rng.random() < n * fg_fraction - n_fg)
    locations: list[np.ndarray] = []
    if label is not None and n_fg > 0:
        fg = np.flatnonzero(label)
        if fg.size:
            values = label.ravel()[fg]
            for cls in np.unique(values):
                idx = fg[values == cls]
                if idx.size > max_voxels_per_class:
                    idx = rng.choice(idx, max_voxels_per_class, replace=False)
                locations.append(idx)
    centers = np.empty((n, 3), dtype=np.int64)
    for i in range(n):
        if i < n_fg and locations:
            idx = locations[int(rng.integers(len(locations)))]
            c = np.array(np.unravel_index(int(idx[int(rng.integers(idx.size))]), dims))
            centers[i] = [min(max(c[a], lo), hi) for a, (lo, hi) in enumerate(ranges)]
        else:
            centers[i] = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]
    return rng.permutation(centers)  # foreground patches should not always come first


def extract_patch(array: np.ndarray, center: Sequence[int], patch_size: Sequence[int],
                  pad_value: float = 0.0) -> np.ndarray:
    """The patch ``[c - p // 2, c - p // 2 + p)`` of the LAST three axes, padded with ``pad_value``
    where it leaves the volume. Leading axes (channels) are kept. Returns a new array."""
    ps = tuple(int(p) for p in patch_size)
    spatial = array.shape[-3:]
    start = [int(c) - p // 2 for c, p in zip(center, ps)]
    src, dst = [], []
    for s, p, d in zip(start, ps, spatial):
        lo, hi = max(s, 0), min(s + p, d)
        if hi <= lo:  # the patch misses the volume entirely along this axis
            lo = hi = 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, lo - s + (hi - lo)))
    out = np.full((*array.shape[:-3], *ps), pad_value, dtype=array.dtype)
    out[(..., *dst)] = array[(..., *src)]
    return out


CaseSource = Any  # datasets.Dataset or a sequence of (image, label) pairs


class PatchDataset(IterableDataset):
    """Random training patches from a set of cases, as model-ready tensors.

    Yields ``{"image": (C, D, H, W) float32 tensor, "label": (1, D, H, W) int64 tensor}`` in
    model order (see ``canonical_to_model``); ``patch_size`` is ``(D, H, W)``.

    Args:
        cases: a ``datasets.Dataset`` from ``phantom_dataset`` (Array3D "image"/"labels"
            columns) or ``load_cases`` (file paths, loaded lazily with ``load_case``), or a
            sequence of ``(image, label)`` pairs: numpy arrays in canonical order, image
            ``(X, Y, Z)`` or channels-first ``(C, X, Y, Z)``, label ``(X, Y, Z)`` or ``None``;
            ``Volume`` objects are accepted too.
        patch_size: ``(D, H, W)`` voxels.
        patches_per_case: patches drawn from a case each time it is loaded.
        seed: with ``set_epoch``, fixes the case order and every patch (independently of the
            number of DataLoader workers, which split the cases between them).
        transform: optional callable on the sample dict (e.g. MONAI dictionary transforms).
        fg_fraction: expected fraction of foreground-centred patches.
    """

    def __init__(self, cases: CaseSource, patch_size: Sequence[int], patches_per_case: int, seed: int = 0,
                 transform: Callable[[dict[str, torch.Tensor]], Any] | None = None, *,
                 fg_fraction: float = 0.33) -> None:
        super().__init__()
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise InputError(f"patch_size must be three positive sizes (D, H, W), got {patch_size}.")
        self.patches_per_case = int(patches_per_case)
        self.seed = int(seed)
        self.transform = transform
        self.fg_fraction = float(fg_fraction)
        self.epoch = 0
        self._kind = self._detect_kind(cases)

    @staticmethod
    def _detect_kind(cases: CaseSource) -> str:
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a core dependency
            datasets = None
        if datasets is not None and isinstance(cases, datasets.Dataset):
            feat = cases.features.get("image")
            if isinstance(feat, (datasets.Array3D, datasets.Array4D)):
                return "arrays"
            return "paths"
        return "pairs"

    def set_epoch(self, epoch: int) -> None:
        """Draw a new case order and new patches (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cases) * self.patches_per_case

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Case ``index`` as (image ``(C, D, H, W)`` float32, label ``(D, H, W)`` or None)."""
        from radfm.io.volume import Volume

        if self._kind == "arrays":
            row = self.cases.with_format("numpy")[int(index)]
            image = np.asarray(row["image"], dtype=np.float32)
            image = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)  # Array4D is channels last
            lab = row.get("labels", row.get("label"))
            label = None if lab is None else np.asarray(lab)
        elif self._kind == "paths":
            from radfm.data.datasets import load_case

            loaded = load_case(self.cases[int(index)])
            image, label = loaded["image"], loaded["label"]
        else:
            image, label = self.cases[int(index)]
        if isinstance(image, Volume):
            image = image.array if image.array.ndim == 3 else np.moveaxis(image.array, -1, 0)
        if isinstance(label, Volume):
            label = label.array
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise InputError(f"case {index}: image must be (X, Y, Z) or (C, X, Y, Z), got {image.shape}.")
        if label is not None:
            label = np.asarray(label)
            if label.ndim == 4 and label.shape[-1] == 1:
                label = label[..., 0]
            if label.shape != image.shape[1:]:
                raise InputError(f"case {index}: label grid {label.shape} does not match image grid "
                                 f"{image.shape[1:]}.", "Resample the label onto the image grid first.")
        image = canonical_to_model(image, channels="first")
        label = None if label is None else canonical_to_model(label)
        return image, label

    def _case_indices(self) -> list[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.cases))
        info = torch.utils.data.get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        return [int(i) for i in order]

    def __iter__(self) -> Iterator[Any]:
        for index in self._case_indices():
            image, label = self._load(index)
            rng = np.random.default_rng([self.seed, self.epoch, index])
            centers = sample_patch_centers(label, self.patch_size, self.patches_per_case,
                                           fg_fraction=self.fg_fraction, rng=rng, shape=image.shape[1:])
            pads = [float(ch.min()) for ch in image]  # pad with each channel's background (air)
            for c in centers:
                img = np.stack([extract_patch(ch, c, self.patch_size, p) for ch, p in zip(image, pads)])
                if label is None:
                    lab = np.zeros(self.patch_size, dtype=np.int64)
                else:
                    lab = extract_patch(label, c, self.patch_size, 0)
                sample: dict[str, torch.Tensor] = {
                    "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                    "label": torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64))[None],
                }
                yield self.transform(sample) if self.transform is not None else sample

