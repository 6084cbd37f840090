"""Where pretraining volumes come from: phantoms, a folder, ../shared/data, or volumes that
installed packages ship.

Every source turns a random draw into one :class:`PreparedVolume`: the whole volume, intensity-
normalised by ``radfm.preprocess.plan.normalize_intensity`` (the function inference uses) and
resampled to the target spacing, in model order ``(1, D, H, W)``. Crops and augmentations are
taken from it later (``radfm.training.augment``), many per volume.

Kinds (``SourceSpec.kind``):

- ``phantom``: SIMULATED CT-like / MR-like torso and head phantoms (``radfm.data.phantom``), made on
  the fly. Training phantom seeds are drawn from ``[TRAIN_SEED_MIN, 2**31)``; the held-out
  evaluation phantoms use seeds below ``TRAIN_SEED_MIN``, so they are never trained on.
- ``folder``: every readable volume (``radfm.io.load_volume``) under ``path``.
- ``shared``: the real volumes of ``../shared/data`` (or ``$RADFM_SHARED_DATA``). For benchmarks and
  experiments only: weights shipped with radfm must not depend on it (a fresh machine lacks it).
- ``packages``: real volumes that pip/Debian packages put on a fresh machine (see
  :data:`PACKAGE_VOLUMES`); missing or too-small ones are skipped with a log line.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from radfm.data.patches import canonical_to_model
from radfm.data.shared import (
    shared_data_root,  # also re-exported: tasks/segmentation/train.py imports it from here
)
from radfm.errors import ConfigError, InputError
from radfm.io import Volume, load_volume
from radfm.preprocess.plan import PreprocessPlan, normalize_intensity

log = logging.getLogger(__name__)

__all__ = [
    "PACKAGE_VOLUMES",
    "TRAIN_SEED_MIN",
    "PackageVolume",
    "PreparedVolume",
    "SourceSpec",
    "build_source",
    "find_package_volumes",
    "prepare_volume",
]

#: Training phantoms use seeds >= this; held-out evaluation phantoms use seeds below it.
TRAIN_SEED_MIN = 1_000_000

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class SourceSpec:
    """One entry of ``data.sources`` in a pretraining recipe.

    Attributes:
        kind: ``phantom``, ``folder``, ``shared`` or ``packages`` (see the module docstring).
        weight: relative frequency with which a new volume comes from this source.
        bodies: phantom only: body regions to simulate (``chest_abdomen``, ``head``), drawn uniformly.
        shape: phantom only: canonical ``(X, Y, Z)`` voxels of a phantom at the target spacing.
        shape_jitter: phantom only: each axis of ``shape`` varies by up to this fraction
            (bodies of different sizes, since phantom anatomy fills the field of view).
        path: folder: the folder to search (recursively); shared: overrides the shared-data root.
        modality: folder/shared: modality to assume when the file does not say (``CT``/``MR``).
        exclude: folder/shared: substrings of file names to skip (label maps, masks).
        names: packages: which entries of ``PACKAGE_VOLUMES`` to use (``None`` = all).
        min_size: smallest native size per axis (voxels) of a real volume to use; smaller ones
            (2D slices, thin test stacks) are skipped with a log line.
        cache_volumes: real sources keep this many prepared volumes in memory.
    """

    kind: Literal["phantom", "folder", "shared", "packages"] = "phantom"
    weight: float = 1.0
    bodies: list[str] = field(default_factory=lambda: ["chest_abdomen", "head"])
    shape: tuple[int, int, int] = (80, 80, 80)
    shape_jitter: float = 0.15
    path: str | None = None
    modality: str | None = None
    exclude: list[str] = field(default_factory=lambda: ["seg", "label", "mask", "aorta_aorta"])
    names: list[str] | None = None
    min_size: int = 32
    cache_volumes: int = 16

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"data.sources: weight must be > 0, got {self.weight} ({self.kind}).")
        if self.kind == "folder" and not self.path:
            raise ConfigError("data.sources: a 'folder' source needs 'path'.", "Add path: /where/the/volumes/are")
        bad = sorted(set(self.bodies) - {"chest_abdomen", "head"})
        if bad or not self.bodies:
            raise ConfigError(f"data.sources: unknown phantom bodies {bad}.", "Use chest_abdomen and/or head.")
        if self.modality is not None and self.modality not in ("CT", "MR"):
            raise ConfigError(f"data.sources: modality must be CT or MR, got {self.modality!r}.")


@dataclass
class PreparedVolume:
    """A whole normalised volume ready for cropping.

    Attributes:
        tensor: ``(1, D, H, W)`` float32 at the target spacing, normalised.
        modality: "CT", "MR" or "other".
        name: where it came from (``phantom:CT:chest_abdomen:1234567``, a file path, …).
    """

    tensor: torch.Tensor
    modality: str
    name: str


def choose_normalization(normalization: dict[str, list[str]], modality: str, rng: np.random.Generator) -> str:
    """One of the normalisations configured for ``modality`` (uniformly; unknown modality: percentile).

    Why several per modality: a task may feed CT windowed or percentile-normalised; an encoder
    that saw both during pretraining serves either plan.
    """
    methods = normalization.get(modality) or ["percentile"]
    return methods[int(rng.integers(len(methods)))] if len(methods) > 1 else methods[0]


def plan_for(modality: str, *, method: str, target_spacing: tuple[float, float, float],
             ct_window: tuple[float, float] = (-1000.0, 1000.0)) -> PreprocessPlan:
    """The plan used to normalise one volume during pretraining."""
    return PreprocessPlan(
        modality=modality if modality in ("CT", "MR") else "any",
        target_spacing=tuple(target_spacing),  # type: ignore[arg-type]
        normalization=method,  # type: ignore[arg-type]
        ct_window=tuple(ct_window),  # type: ignore[arg-type]
    )


def prepare_volume(
    volume: Volume,
    *,
    modality: str,
    method: str,
    target_spacing: tuple[float, float, float],
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    name: str = "",
) -> PreparedVolume:
    """Canonical ``Volume`` -> :class:`PreparedVolume` (first channel only for multi-channel input).

    ``method`` is a ``PreprocessPlan.normalization``. Normalises first (statistics of the whole
    native volume, as ``apply_plan`` does), then resamples to ``target_spacing`` (mm along
    canonical X, Y, Z).
    """
    plan = plan_for(modality, method=method, target_spacing=target_spacing, ct_window=ct_window)
    array = volume.array[..., 0] if volume.array.ndim == 4 else volume.array
    norm = normalize_intensity(np.asarray(array), plan)
    t = torch.from_numpy(np.ascontiguousarray(canonical_to_model(norm)))[None].float()  # (1, D, H, W)
    spacing_dhw = tuple(reversed(volume.spacing))
    target_dhw = tuple(reversed(tuple(target_spacing)))
    size = tuple(max(1, round(n * s / t_)) for n, s, t_ in zip(t.shape[1:], spacing_dhw, target_dhw))
    if size != tuple(t.shape[1:]):
        t = F.interpolate(t[None], size=size, mode="trilinear", align_corners=False)[0]
    return PreparedVolume(tensor=t.contiguous(), modality=modality, name=name)


# ----------------------------------------------------------------------------- real volumes in packages
@dataclass(frozen=True)
class PackageVolume:
    """A real volume some installable package ships.

    Attributes:
        name: short id used in ``SourceSpec.names`` and the model card.
        locate: returns the file path, or ``None`` when the package/file is absent.
        modality: "CT" or "MR".
        install: how a fresh machine gets it.
        licence: the licence of the data, for model cards.
    """

    name: str
    locate: Callable[[], Path | None]
    modality: str
    install: str
    licence: str


def _in_package(package: str, relative: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        import importlib.util

        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        p = Path(next(iter(spec.submodule_search_locations))) / relative
        return p if p.is_file() else None

    return locate


def _pydicom_file(name: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            from pydicom.data import get_testdata_file

            p = get_testdata_file(name, download=False)
        except Exception:  # pydicom absent, or a version without that file / signature
            return None
        return Path(p) if p and Path(p).is_file() else None

    return locate


def _system_file(path: str) -> Callable[[], Path | None]:
    return lambda: Path(path) if Path(path).is_file() else None


#: Candidates, checked on each machine. nibabel's and pydicom's are real anatomy but thinner than
#: 32 voxels along one axis, so the default ``min_size`` skips them (kept here so the log says why).
PACKAGE_VOLUMES: tuple[PackageVolume, ...] = (
    PackageVolume("mricron:ch2", _system_file("/usr/share/mricron/templates/ch2.nii.gz"), "MR",
                  "apt-get install mricron-data",
                  "Colin27 single-subject T1 (Holmes et al. 1998, MNI); Debian mricron-data, BSD-style "
                  "licence with attribution"),
    PackageVolume("mricron:ch2bet", _system_file("/usr/share/mricron/templates/ch2bet.nii.gz"), "MR",
                  "apt-get install mricron-data", "Colin27 T1, brain-extracted; as mricron:ch2"),
    PackageVolume("nibabel:anatomical", _in_package("nibabel", "tests/data/anatomical.nii"), "MR",
                  "pip install nibabel", "nibabel test data (MIT)"),
    PackageVolume("nibabel:example4d", _in_package("nibabel", "tests/data/example4d.nii.gz"), "MR",
                  "pip install nibabel", "nibabel test data (MIT)"),
    PackageVolume("pydicom:emri_small", _pydicom_file("emri_small.dcm"), "MR", "pip install pydicom-data",
                  "pydicom(-data) test data (MIT)"),
)


def find_package_volumes(
    names: list[str] | None = None, *, min_size: int = 32
) -> list[tuple[PackageVolume, Path]]:
    """The package volumes present on this machine that are real 3D volumes of at least
    ``min_size`` voxels per axis; each skipped one gets an INFO log line saying why."""
    known = {pv.name: pv for pv in PACKAGE_VOLUMES}
    if names is not None:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ConfigError(f"unknown package volume(s) {unknown}.", f"Known: {sorted(known)}.")
    found = []
    for pv in PACKAGE_VOLUMES:
        if names is not None and pv.name not in names:
            continue
        path = pv.locate()
        if path is None:
            log.info("packages source: %s not found on this machine (%s); skipped", pv.name, pv.install)
            continue
        try:
            shape = load_volume(path, modality=pv.modality).shape
        except (InputError, OSError) as exc:
            log.info("packages source: %s unreadable (%s); skipped", pv.name, exc)
            continue
        if min(shape[:3]) < min_size:
            log.info("packages source: %s is %s voxels, thinner than %d; skipped", pv.name, shape[:3], min_size)
            continue
        found.append((pv, path))
    return found


# ----------------------------------------------------------------------------- sources
class PhantomSource:
    """SIMULATED phantoms generated on the fly at the target spacing."""

    kind = "phantom"

    def __init__(self, spec: SourceSpec, *, modality_mix: dict[str, float], normalization: dict[str, list[str]],
                 target_spacing: tuple[float, float, float], ct_window: tuple[float, float]) -> None:
        self.spec = spec
        self.modalities = sorted(modality_mix)
        weights = np.asarray([modality_mix[m] for m in self.modalities], dtype=np.float64)
        self.modality_p = weights / weights.sum()
        self.normalization = normalization
        self.target_spacing = tuple(target_spacing)
        self.ct_window = ct_window

    def __len__(self) -> int:
        return 1

    def make(self, seed: int, modality: str, body: str, shape: tuple[int, int, int], method: str) -> PreparedVolume:
        from radfm.data.phantom import make_phantom

        kwargs = dict(modality=modality, shape=shape, spacing=self.target_spacing, body=body)
        try:
            case = make_phantom(seed, **kwargs)  # type: ignore[arg-type]
        except InputError:
            # Small grids may leave an organ too small for a random lesion: same anatomy without lesions.
            case = make_phantom(seed, n_lesions=0, **kwargs)  # type: ignore[arg-type]
        return prepare_volume(case.image, modality=modality, method=method, target_spacing=self.target_spacing,
                              ct_window=self.ct_window, name=f"phantom:{modality}:{body}:{seed}:{method}")

    def load(self, rng: np.random.Generator) -> PreparedVolume:
        seed = int(rng.integers(TRAIN_SEED_MIN, 2**31 - 1))
        modality = self.modalities[int(rng.choice(len(self.modalities), p=self.modality_p))]
        body = self.spec.bodies[int(rng.integers(len(self.spec.bodies)))]
        j = self.spec.shape_jitter
        shape = tuple(max(16, round(s * (1.0 + rng.uniform(-j, j)))) for s in self.spec.shape)
        method = choose_normalization(self.normalization, modality, rng)
        return self.make(seed, modality, body, shape, method)  # type: ignore[arg-type]


class FileSource:
    """Real volumes from files (folder, shared data or packages), prepared once and cached."""

    def __init__(self, kind: str, files: list[tuple[Path, str | None]], *, spec: SourceSpec,
                 normalization: dict[str, list[str]], target_spacing: tuple[float, float, float],
                 ct_window: tuple[float, float]) -> None:
        self.kind = kind
        self.files = files
        self.spec = spec
        self.normalization = normalization
        self.target_spacing = tuple(target_spacing)
        self.ct_window = ct_window
        # (file index, normalisation) -> prepared volume; files that cannot be used
        self._cache: OrderedDict[tuple[int, str], PreparedVolume] = OrderedDict()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Volume | None:
        path, declared = self.files[index]
        try:
            vol = load_volume(path, modality=declared) if declared else load_volume(path)
        except (InputError, OSError) as exc:
            log.info("%s source: %s unreadable (%s); skipped", self.kind, path, exc)
            return None
        if vol.array.ndim not in (3, 4) or min(vol.shape[:3]) < self.spec.min_size:
            log.info("%s source: %s is %s voxels, thinner than %d; skipped", self.kind, path, vol.shape[:3],
                     self.spec.min_size)
            return None
        return vol

    def load(self, rng: np.random.Generator) -> PreparedVolume:
        order = rng.permutation(len(self.files))
        for index in (int(i) for i in order):
            if index in self._bad:
                continue
            declared = self.files[index][1] or self.spec.modality
            # The modality (hence the normalisation) is known before reading only when declared;
            # otherwise read the file to learn it (cheap next to the crops taken from it).
            vol = None
            if declared is None:
                vol = self._load(index)
                if vol is None:
                    self._bad.add(index)
                    continue
            modality = declared or (vol.modality if vol is not None and vol.modality in ("CT", "MR") else "other")
            method = choose_normalization(self.normalization, modality, rng)
            key = (index, method)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            vol = vol if vol is not None else self._load(index)
            if vol is None:
                self._bad.add(index)
                continue
            pv = prepare_volume(vol, modality=modality, method=method, target_spacing=self.target_spacing,
                                ct_window=self.ct_window, name=f"{self.files[index][0]}:{method}")
            self._cache[key] = pv
            while len(self._cache) > max(1, self.spec.cache_volumes):
                self._cache.popitem(last=False)
            return pv
        raise InputError(f"no readable 3D volume of at least {self.spec.min_size} voxels per axis in the "
                         f"{self.kind} source.", "Check the source's path / names, or remove the source.")


def list_volume_files(root: Path, exclude: list[str]) -> list[Path]:
    """Volume files under ``root`` (recursive) plus folders holding DICOM files (one series each)."""
    out: list[Path] = []
    dicom_dirs: set[Path] = set()
    for p in sorted(root.rglob("*")):
        name = p.name.lower()
        if not p.is_file() or any(e.lower() in name for e in exclude):
            continue
        if name.endswith(_VOLUME_SUFFIXES):
            out.append(p)
        elif name.endswith(_DICOM_SUFFIXES):
            dicom_dirs.add(p.parent)
    return out + sorted(dicom_dirs)


def build_source(spec: SourceSpec, *, modality_mix: dict[str, float], normalization: dict[str, list[str]],
                 target_spacing: tuple[float, float, float],
                 ct_window: tuple[float, float]) -> PhantomSource | FileSource | None:
    """The source object of one ``SourceSpec`` (``None`` when a real source finds nothing usable;
    the caller logs it and drops the source, so a recipe still runs on a machine without it)."""
    common = dict(normalization=normalization, target_spacing=target_spacing, ct_window=ct_window)
    if spec.kind == "phantom":
        return PhantomSource(spec, modality_mix=modality_mix, **common)  # type: ignore[arg-type]
    if spec.kind == "packages":
        found = find_package_volumes(spec.names, min_size=spec.min_size)
        files: list[tuple[Path, str | None]] = [(p, pv.modality) for pv, p in found]
        for pv, _ in found:
            log.info("packages source: using %s (%s)", pv.name, pv.licence)
    else:
        if spec.kind == "shared":
            root = shared_data_root(spec.path)
            log.warning("shared source: ../shared/data is for benchmarks; do not ship weights trained on it.")
        else:
            root = Path(spec.path).expanduser() if spec.path else None
        if root is None or not root.is_dir():
            log.warning("%s source: folder %s not found; skipped", spec.kind, spec.path or "../shared/data")
            return None
        files = [(p, spec.modality) for p in list_volume_files(root, spec.exclude)]
    if not files:
        log.warning("%s source: no usable volumes found; skipped", spec.kind)
        return None
    return FileSource(spec.kind, files, spec=spec, **common)  # type: ignore[arg-type]
