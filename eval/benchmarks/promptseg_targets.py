"""The real held-out objects of ``radfm bench promptseg`` (CT organs, brain MRI structures, lesions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radfm.io import load_volume
from radfm.io.volume import Volume

__all__ = ["Target", "load_targets", "shared_root"]

_PR = "seg3d/pyradiomics"  # as REAL_CASES spells the pyradiomics images


@dataclass
class Target:
    group: str
    name: str
    volume: Volume
    gt: np.ndarray  # canonical bool
    held_out: bool = True  # False: the subject is in the training split (reported apart, not in the means)


def shared_root(root: Path | None) -> Path:
    """The shared-data root with its MANIFEST.md, or exit with the flag to pass."""
    from radfm.data.shared import shared_data_root

    found = shared_data_root(str(root) if root else None)
    if found is None or not (found / "MANIFEST.md").is_file():
        raise SystemExit("../shared/data not found: pass --data DIR (the real test volumes)")
    return found


def load_targets(data: Path, quick: bool = False) -> list[Target]:
    """The real objects of the benchmark (see module doc)."""
    out: list[Target] = []
    ts = data / "seg3d" / "totalsegmentator"
    ct = load_volume(ts / "example_ct_sm.nii.gz", modality="CT")
    seg = load_volume(ts / "example_seg.nii.gz").array
    organs = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6}
    for name, lid in list(organs.items())[: 2 if quick else None]:
        out.append(Target("CT organ", name, ct, seg == lid))
    npz = np.load(data / "seg3d" / "voxelmorph_brain" / "test_scan_uint8.npz")
    brain = Volume(array=npz["vol"].astype(np.float32) / 255.0, affine=np.eye(4), modality="MR")
    structures = {"cerebral white matter (L)": 2, "lateral ventricle (L)": 4, "cerebellum cortex (L)": 8,
                  "thalamus (L)": 10, "brain stem": 16}
    for name, lid in list(structures.items())[: 1 if quick else None]:
        out.append(Target("brain MRI structure", name, brain, npz["seg"] == lid))
    py = data / _PR
    # lung2 is held out; brain1 and lung1 are in the training split (REAL_CASES): shown apart, never averaged in.
    lesions = [("lung tumour 2 (CT)", "lung2", "CT"), ("brain tumour (MRI)", "brain1", "MR"),
               ("lung tumour 1 (CT)", "lung1", "CT")]
    for name, stem, mod in lesions[: 1 if quick else None]:
        img = load_volume(py / f"{stem}_image.nrrd", modality=mod)
        lab = load_volume(py / f"{stem}_label.nrrd").array > 0
        held = _held_out(f"{_PR}/{stem}_image.nrrd")
        out.append(Target("lesion" if held else "lesion, training subject", name, img, lab, held_out=held))
    return out


def _held_out(image: str) -> bool:
    """Whether ``REAL_CASES`` puts this image in the test split (unknown images count as held out)."""
    from radfm.tasks.segmentation.data import REAL_CASES

    return all(c.split == "test" for c in REAL_CASES if c.image == image)
