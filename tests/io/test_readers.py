"""load_volume: real CT/MR/DICOM/NRRD data, modality rules, privacy and bad input."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radfm.errors import InputError
from radfm.io import (
    canonical_index_to_world,
    load_volume,
    lps_to_ras,
    native_index_to_canonical,
    to_native,
)

TS = Path("seg3d/totalsegmentator")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------- real data


def test_dicom_series_geometry_hu_and_shared_grid_with_seg(shared_data: Path) -> None:
    ct = load_volume(shared_data / TS / "example_ct_dicom")
    assert ct.modality == "CT" and ct.meta["modality_source"] == "header"
    assert ct.shape == (512, 512, 20) and ct.array.dtype == np.float32
    # Canonical axes are R, A, S; the series is axial, so the 2 mm slice axis is the last one.
    assert np.allclose(ct.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-4)
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    assert ct.array.min() <= -900 and ct.array.max() >= 500
    assert ct.meta["n_files"] == 20 and ct.meta["format"] == "dicom-series"

    # TotalSegmentator's label map of this series is stored LAS (rows flipped, as dcm2niix
    # writes it) but covers exactly the same voxels: after canonical reorientation both grids
    # must coincide.
    seg = load_volume(shared_data / TS / "example_seg_dicom.nii.gz")
    assert seg.shape == ct.shape
    assert np.allclose(seg.affine, ct.affine, atol=1e-3)
    assert seg.array.dtype == np.uint8  # masks are not upcast
    # Real anatomy as a geometry check: vertebrae (labels 32/33, T12/T11) lie on bone and the
    # liver (5) on soft tissue only if both volumes are oriented the same way; an A/P flip of
    # the mask puts the vertebrae in front of the body.
    assert np.median(ct.array[np.isin(seg.array, (32, 33))]) > 150
    assert 0 < np.median(ct.array[seg.array == 5]) < 200
    assert np.median(ct.array[np.isin(seg.array[:, ::-1], (32, 33))]) < 150


def test_dicom_series_voxels_match_pydicom(shared_data: Path) -> None:
    folder = shared_data / TS / "example_ct_dicom"
    ct = load_volume(folder)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    order = sorted(range(len(headers)), key=lambda n: float(headers[n].ImagePositionPatient[2]))
    for k, (i, j) in ((0, (100, 300)), (13, (256, 17))):
        ds = pydicom.dcmread(sorted(folder.iterdir())[order[k]])
        expected_hu = float(ds.pixel_array[j, i]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        c = np.rint(native_index_to_canonical((i, j, k), ct)).astype(int)
        assert ct.array[tuple(c)] == pytest.approx(expected_hu)
        # World position from the DICOM header: IPP + i·Δcol·row_dir + j·Δrow·col_dir (LPS).
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        ps = np.array(ds.PixelSpacing, dtype=float)
        lps = np.array(ds.ImagePositionPatient, dtype=float) + i * ps[1] * iop[:3] + j * ps[0] * iop[3:]
        assert np.allclose(canonical_index_to_world(c, ct), lps_to_ras(lps), atol=1e-4)


def test_totalsegmentator_nifti_ct(shared_data: Path) -> None:
    v = load_volume(shared_data / TS / "example_ct_sm.nii.gz")
    assert v.shape == (122, 101, 30)
    assert np.allclose(v.spacing, 3.0)
    assert v.array.min() <= -900 and v.array.max() >= 500
    assert (v.modality, v.meta["modality_source"]) == ("CT", "detected")
    assert v.array.dtype == np.int16  # integer HU stay integer


@pytest.mark.parametrize("name", ["brain1_image.nrrd", "lung1_image.nrrd"])
def test_nrrd_spacing_and_origin_match_simpleitk(shared_data: Path, name: str) -> None:
    path = shared_data / "seg3d/pyradiomics" / name
    v = load_volume(path)
    img = sitk.ReadImage(str(path))
    # Map each stored (ITK) axis to its canonical axis, then compare voxel sizes axis by axis.
    origin_c = native_index_to_canonical((0, 0, 0), v)
    for axis, size in enumerate(img.GetSpacing()):
        step = native_index_to_canonical(np.eye(3)[axis], v) - origin_c
        assert v.spacing[int(np.argmax(np.abs(step)))] == pytest.approx(size, rel=1e-6)
    world0 = canonical_index_to_world(origin_c, v)
    assert np.allclose(world0, lps_to_ras(img.GetOrigin()), atol=1e-6)
    far = (200, 150, 20)
    expected = lps_to_ras(img.TransformIndexToPhysicalPoint(far))
    assert np.allclose(canonical_index_to_world(native_index_to_canonical(far, v), v), expected, atol=1e-6)
    assert v.array[tuple(np.rint(native_index_to_canonical(far, v)).astype(int))] == \
        sitk.GetArrayViewFromImage(img)[far[2], far[1], far[0]]
    if name.startswith("lung"):
        assert (v.modality, v.meta["modality_source"]) == ("CT", "detected")
    else:  # an MR without declaration is not guessed
        assert (v.modality, v.meta["modality_source"]) == ("unknown", "none")
        assert load_volume(path, modality="mri").modality == "MR"


def test_2d_mha_is_refused_with_a_clear_message(shared_data: Path) -> None:
    path = shared_data / "registration/itkelastix_ct2d_head/CT_2D_head_fixed.mha"
    with pytest.raises(InputError, match=r"2D image \(256×256\); radfm needs a 3D volume"):
        load_volume(path)


def test_single_ct_dicom_in_hu(shared_data: Path) -> None:
    path = shared_data / "dicom/CT_small.dcm"
    v = load_volume(path)
    ds = pydicom.dcmread(path)
    assert v.shape == (128, 128, 1) and v.modality == "CT" and v.array.dtype == np.float32
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # native order is (column, row, slice)
    assert np.array_equal(to_native(v.array, v.native)[:, :, 0], hu.T)
    assert v.array.min() < -500  # stored values are all positive; only the rescale makes air negative
    assert np.allclose(sorted(v.spacing), sorted([*map(float, ds.PixelSpacing), float(ds.SliceThickness)]))


def test_enhanced_multiframe_mr(shared_data: Path) -> None:
    path = shared_data / "dicom/emri_small.dcm"
    v = load_volume(path)
    frames = pydicom.dcmread(path).pixel_array  # (10, 64, 64)
    assert v.shape == (64, 64, 10) and (v.modality, v.meta["modality_source"]) == ("MR", "header")
    assert np.array_equal(to_native(v.array, v.native), np.transpose(frames, (2, 1, 0)))
    assert "geometry_warning" in v.meta  # this file carries no position/orientation at all


def test_no_patient_identifiers_in_meta(shared_data: Path) -> None:
    files = [shared_data / "dicom" / n for n in
             ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "693_UNCR.dcm", "explicit_VR-UN.dcm")]
    checked = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        v = load_volume(path)
        text = repr(v.meta) + repr(v.native.header)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "SeriesInstanceUID", "StudyInstanceUID"):
            value = str(ds.get(keyword, "") or "")
            if value:
                checked += 1
                assert value not in text, f"{keyword} of {path.name} leaked into meta"
    assert checked >= 8  # the test really saw identifiers to look for


def test_declared_modality_wins_and_unknown_is_rejected(shared_data: Path) -> None:
    v = load_volume(shared_data / "dicom/MR_small.dcm", modality="CT")
    assert (v.modality, v.meta["modality_source"]) == ("CT", "declared")
    with pytest.raises(InputError, match="Unknown modality 'xray'"):
        load_volume(shared_data / "dicom/MR_small.dcm", modality="xray")


# --------------------------------------------------------------------------------- numpy


def test_numpy_npz_affine_and_default(tmp_path: Path) -> None:
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    aff = np.diag([-2.0, 2.0, 3.0, 1.0])
    np.savez(tmp_path / "a.npz", vol=vol, affine=aff, seg=np.zeros(3))
    v = load_volume(tmp_path / "a.npz")
    assert np.array_equal(v.array, vol[::-1]) and np.allclose(v.spacing, (2, 2, 3))
    assert "geometry_warning" not in v.meta
    np.save(tmp_path / "b.npy", vol.astype(np.float64))
    w = load_volume(tmp_path / "b.npy")
    assert np.array_equal(w.affine, np.eye(4)) and "identity" in w.meta["geometry_warning"]
    assert w.array.dtype == np.float32
    np.save(tmp_path / "c.npy", np.zeros((8, 8, 8, 3), np.uint8))
    assert load_volume(tmp_path / "c.npy").n_channels == 3
    np.savez(tmp_path / "d.npz", a=vol, b=vol)
    with pytest.raises(InputError, match="none is called 'vol'"):
        load_volume(tmp_path / "d.npz")


# --------------------------------------------------------------------------------- bad input


def _expect_error(path: Path, pattern: str, **kwargs: object) -> InputError:
    before = _sha(path) if path.is_file() else None
    with pytest.raises(InputError, match=pattern) as info:
        load_volume(path, **kwargs)  # type: ignore[arg-type]
    if before is not None:
        assert _sha(path) == before, "reading must never modify the input"
    assert info.value.hint, "every InputError says what to do"
    return info.value


def test_missing_and_empty_and_unsupported(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.nii.gz", "No file or folder")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    _expect_error(tmp_path / "empty.nii.gz", r"empty \(0 bytes\)")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG....")
    _expect_error(tmp_path / "scan.png", "Unsupported file type '.png'")


def test_truncated_and_garbage_nifti(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(-1000, 1000, (40, 40, 40)).astype(np.int16)
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), full)
    raw = full.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    err = _expect_error(cut, "cut short")
    assert "truncated" in err.hint
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(np.random.default_rng(1).bytes(2000))
    _expect_error(garbage, "not a NIfTI file")
    # gzip-valid but the NIfTI inside is too short: fails only when the data is read
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(gzip.decompress(raw)[:1000]))
    _expect_error(short, "truncated")


def test_bad_array_dimensions(tmp_path: Path) -> None:
    np.save(tmp_path / "five.npy", np.zeros((4, 4, 4, 2, 2), np.float32))
    _expect_error(tmp_path / "five.npy", r"5D array .* needs a 3D volume")
    np.save(tmp_path / "two.npy", np.zeros((16, 16), np.float32))
    _expect_error(tmp_path / "two.npy", r"2D array of shape \(16, 16\); radfm needs a 3D volume")
    np.save(tmp_path / "chfirst.npy", np.zeros((2, 16, 16, 16), np.float32))
    err = _expect_error(tmp_path / "chfirst.npy", "too long to be channels")
    assert "channels-first" in err.hint


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    _expect_error(tmp_path, r"No DICOM image files found .* \(1 file checked\)")


def test_folder_with_two_series_lists_them_without_identifiers(shared_data: Path, tmp_path: Path) -> None:
    src = [shared_data / "dicom/CT_small.dcm", shared_data / "dicom/MR_small.dcm"]
    for f in src:
        shutil.copy(f, tmp_path / f.name)
    err = _expect_error(tmp_path, "holds 2 DICOM series")
    message = str(err)
    assert "[0]" in message and "[1]" in message and "series=N" in err.hint and "--series N" in err.hint
    for f in src:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(keyword, "") or "")
            assert not value or value not in message, f"{keyword} leaked into the error"
    lines = [line for line in message.splitlines() if line.strip().startswith("[")]
    for index in (0, 1):
        v = load_volume(tmp_path, series=index)
        assert v.modality in lines[index] and v.shape[2] == 1
    _expect_error(tmp_path, r"series=5 is not one of the 2 series", series=5)


# --------------------------------------------------------------------------------- synthetic series


def _write_series(folder: Path, src: Path, iop: list[float], positions: list[np.ndarray]) -> None:
    """Copies of a real slice at the given positions, written in shuffled file order with
    reversed instance numbers and a per-slice intercept that tags each slice."""
    base = pydicom.dcmread(src)
    folder.mkdir()
    for n in (2, 0, 3, 1):
        ds = base.copy()
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in positions[n]]
        ds.RescaleIntercept = -1024 + 10 * n
        ds.InstanceNumber = 10 - n
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"f{(n * 7) % 4}.dcm")


@pytest.mark.parametrize("case", ["axial-tilted", "sagittal"])
def test_series_sorted_by_position_with_spacing_from_positions(shared_data: Path, tmp_path: Path,
                                                              case: str) -> None:
    src = shared_data / "dicom/CT_small.dcm"
    if case == "axial-tilted":  # gantry tilt: slices also shift 0.5 mm along y
        iop, step = [1.0, 0, 0, 0, 1.0, 0], np.array([0.0, 0.5, 2.5])
    else:  # sagittal, slices stored from patient left to right
        iop, step = [0, 1.0, 0, 0, 0, -1.0], np.array([-3.0, 0.0, 0.0])
    origin = np.array([-20.0, 10.0, 30.0])
    positions = [origin + n * step for n in range(4)]
    _write_series(tmp_path / "s", src, iop, positions)
    v = load_volume(tmp_path / "s")
    ds = pydicom.dcmread(src)
    raw = ds.pixel_array.astype(np.float32).T  # (column, row)
    normal = np.cross(iop[:3], iop[3:])
    order = sorted(range(4), key=lambda n: float(positions[n] @ normal))
    stored = to_native(v.array, v.native)
    ps = np.array(ds.PixelSpacing, dtype=float)
    for k, n in enumerate(order):  # slice k of the volume is the k-th along the normal
        assert np.array_equal(stored[:, :, k], raw - 1024 + 10 * n)
        i, j = 5, 100
        lps = positions[n] + i * ps[1] * np.array(iop[:3]) + j * ps[0] * np.array(iop[3:])
        c = native_index_to_canonical((i, j, k), v)
        assert np.allclose(canonical_index_to_world(c, v), lps_to_ras(lps), atol=1e-6)
    # slice spacing comes from the positions, not from SliceThickness (5 mm in this file)
    assert np.isclose(np.linalg.norm(v.native.affine[:3, 2]), np.linalg.norm(step))
    assert any(np.isclose(s, np.linalg.norm(step)) for s in v.spacing)


def test_series_with_duplicate_positions_is_refused(shared_data: Path, tmp_path: Path) -> None:
    pos = np.zeros(3)
    _write_series(tmp_path / "dup", shared_data / "dicom/CT_small.dcm", [1.0, 0, 0, 0, 1.0, 0],
                  [pos, pos, pos + 1, pos + 2])
    _expect_error(tmp_path / "dup", "slices share a position")
