"""save_like / save_volume: results land voxel-exactly in the input's own space, atomically."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import radfm.io.writers as writers
from radfm.errors import InputError
from radfm.io import (
    Volume,
    canonical_index_to_world,
    load_volume,
    native_index_to_canonical,
    save_like,
    save_volume,
)

TS = Path("seg3d/totalsegmentator")


def _rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.deg2rad(deg_x), np.deg2rad(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


def oblique_nifti(path: Path) -> nib.Nifti1Image:
    """A 20°×20° oblique volume stored roughly P, S, L (axes permuted and two flipped)."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 1000, (9, 11, 13)).astype(np.int16)
    stored_axes = np.array([[0, 0, -1.2],   # stored axis 2 → towards Left
                            [-0.9, 0, 0],   # stored axis 0 → towards Posterior
                            [0, 1.5, 0]])   # stored axis 1 → towards Superior
    aff = np.eye(4)
    aff[:3, :3] = _rotation(20, 20) @ stored_axes
    aff[:3, 3] = (31.5, -40.25, 12.0)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=2)
    nib.save(img, path)
    return nib.load(path)


def test_oblique_nifti_round_trip_is_exact(tmp_path: Path) -> None:
    src = oblique_nifti(tmp_path / "oblique.nii.gz")
    stored = np.asarray(src.dataobj)
    v = load_volume(tmp_path / "oblique.nii.gz")
    ref = nib.as_closest_canonical(src)  # nibabel's own canonical view as the reference
    assert np.array_equal(v.array, np.asarray(ref.dataobj)) and np.allclose(v.affine, ref.affine)
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")

    mask = v.array > 500  # computed in canonical space, as a model would
    out = save_like(mask, v, tmp_path / "out" / "mask.nii.gz")
    back = nib.load(out)
    assert np.array_equal(np.asarray(back.dataobj), (stored > 500).astype(np.uint8))
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, src.affine)
    assert np.array_equal(back.header.get_qform(), src.header.get_qform())
    assert np.array_equal(back.header.get_sform(), src.header.get_sform())
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 2)
    # the image itself round-trips too
    img_out = save_volume(v, tmp_path / "image.nii")
    assert np.array_equal(np.asarray(nib.load(img_out).dataobj), stored)


def test_totalsegmentator_labels_round_trip(shared_data: Path, tmp_path: Path) -> None:
    src_path = shared_data / TS / "example_seg.nii.gz"
    labels = load_volume(src_path)
    ct = load_volume(shared_data / TS / "example_ct_sm.nii.gz")
    assert labels.shape == ct.shape and np.allclose(labels.affine, ct.affine)
    out = save_like(labels.array, ct, tmp_path / "seg.nii.gz")
    src, back = nib.load(src_path), nib.load(out)
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))
    assert back.get_data_dtype() == np.uint8  # 41 labels fit uint8
    assert np.array_equal(back.affine, src.affine)


def test_dicom_series_mask_overlays_the_series(shared_data: Path, tmp_path: Path) -> None:
    ct = load_volume(shared_data / TS / "example_ct_dicom")
    ijk = np.array([[100, 300, 0], [256, 17, 13], [511, 511, 19]])
    c = np.rint(native_index_to_canonical(ijk, ct)).astype(int)
    mask = np.zeros(ct.shape, np.uint16)
    mask[tuple(c.T)] = (1, 2, 300)
    out = save_like(mask, ct, tmp_path / "mask.nii.gz")
    back = nib.load(out)
    assert back.get_data_dtype() == np.int16  # label 300 needs more than uint8
    assert np.allclose(back.affine, ct.native.affine, atol=1e-6)
    data = np.asarray(back.dataobj)
    assert [int(data[tuple(p)]) for p in ijk] == [1, 2, 300]
    world_mask = nib.affines.apply_affine(back.affine, ijk)
    assert np.allclose(world_mask, canonical_index_to_world(c, ct), atol=1e-4)
    # and the TotalSegmentator label map of this series is on the same world grid
    seg = nib.load(shared_data / TS / "example_seg_dicom.nii.gz")
    assert np.allclose(nib.as_closest_canonical(back).affine, nib.as_closest_canonical(seg).affine, atol=1e-3)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_source_written_back_with_itk_geometry(shared_data: Path, tmp_path: Path, suffix: str) -> None:
    path = shared_data / "seg3d/pyradiomics/brain1_label.nrrd"
    v = load_volume(path)
    out = save_like(v.array, v, tmp_path / f"label{suffix}")
    src, back = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert back.GetOrigin() == src.GetOrigin() and back.GetSpacing() == src.GetSpacing()
    assert back.GetDirection() == src.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(src))


def test_mhd_with_data_file_and_in_memory_volume(tmp_path: Path) -> None:
    aff = np.diag([0.5, 0.75, 2.0, 1.0])
    aff[:3, 3] = (-10, 20, 30)
    vol = Volume(array=np.arange(60, dtype=np.float64).reshape(3, 4, 5), affine=aff)
    out = save_like(vol.array, vol, tmp_path / "x.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mhd", "x.zraw"]
    again = load_volume(out)
    assert np.allclose(again.affine, aff) and np.array_equal(again.array, vol.array.astype(np.float32))
    npz = save_volume(vol, tmp_path / "x.npz")
    assert np.array_equal(load_volume(npz).affine, aff)


def test_dtype_choice_and_shape_check(tmp_path: Path) -> None:
    vol = Volume(array=np.zeros((4, 4, 4), np.float32), affine=np.eye(4))
    cases = {"u8": (np.full((4, 4, 4), 7, np.int64), np.uint8), "i16": (np.full((4, 4, 4), -3, np.int64), np.int16),
             "u16": (np.full((4, 4, 4), 40000, np.int64), np.uint16), "f": (np.zeros((4, 4, 4)), np.float32)}
    for name, (arr, expected) in cases.items():
        out = save_like(arr, vol, tmp_path / f"{name}.nii.gz")
        assert nib.load(out).get_data_dtype() == expected, name
    with pytest.raises(InputError, match="do not fit the requested dtype uint8"):
        save_like(np.full((4, 4, 4), 300), vol, tmp_path / "bad.nii.gz", dtype=np.uint8)
    with pytest.raises(InputError, match=r"does not match the reference volume's canonical shape \(4, 4, 4\)"):
        save_like(np.zeros((4, 4, 5)), vol, tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match=r"DICOM .* not supported yet"):
        save_like(np.zeros((4, 4, 4)), vol, tmp_path / "bad.dcm")


def test_refuses_to_overwrite_the_source(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "seg.nii.gz"
    shutil.copy(shared_data / TS / "example_seg.nii.gz", src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    v = load_volume(src)
    with pytest.raises(InputError, match="Refusing to overwrite the input file"):
        save_like(v.array, v, src)
    with pytest.raises(InputError, match="Refusing to overwrite the input file"):
        save_like(v.array, v, tmp_path / "sub" / ".." / "seg.nii.gz")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_atomic_write_leaves_no_partial_or_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = Volume(array=np.ones((5, 5, 5), np.uint8), affine=np.eye(4))
    out = save_like(vol.array, vol, tmp_path / "deep" / "er" / "mask.nii.gz")  # parents created
    assert [p.name for p in out.parent.iterdir()] == ["mask.nii.gz"]  # no temp leftovers
    good = out.read_bytes()

    def crash(target: Path, *args: object) -> None:
        target.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writers, "_write_nifti", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_like(vol.array * 2, vol, out)
    with pytest.raises(RuntimeError, match="disk full"):
        save_like(vol.array, vol, tmp_path / "new.nii.gz")
    assert out.read_bytes() == good  # the previous result is intact
    assert not (tmp_path / "new.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er", "mask.nii.gz"]
