"""Masks for a real DICOM series: NIfTI overlays the series exactly; DICOM SEG references the right slices."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from radfm.errors import InputError
from radfm.io import load_volume, save_like
from radfm.io.coords import LPS_TO_RAS
from radfm.io.dicom import source_datasets
from radfm.tasks.segmentation.dicom_seg import write_dicom_seg

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def series(ct_dicom_series: Path) -> Path:
    return ct_dicom_series


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    """An asymmetric block (so a flip or transposition would show) on a few slices."""
    m = np.zeros(shape, np.uint8)
    m[100:220, 150:260, 5:12] = 1
    m[100:130, 150:170, 12:15] = 1
    return m


def test_nifti_mask_for_a_dicom_series_has_the_series_geometry(series: Path, tmp_path: Path) -> None:
    vol = load_volume(series)
    out = save_like(_mask(vol.shape), vol, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, vol.native.affine, atol=1e-4)
    assert img.shape == vol.native.shape
    again = load_volume(out)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(again.array, _mask(vol.shape))
    # the first stored slice of the mask sits at the first sorted DICOM slice's position (LPS ↔ RAS)
    ds0 = source_datasets(vol)[0]
    np.testing.assert_allclose((LPS_TO_RAS @ img.affine)[:3, 3], np.asarray(ds0.ImagePositionPatient, float), atol=1e-3)


def test_dicom_seg_frames_reference_the_right_source_slices(series: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    vol = load_volume(series)
    mask = _mask(vol.shape)
    with caplog.at_level(logging.DEBUG):
        path = write_dicom_seg(mask, vol, tmp_path / "seg.dcm", segment_labels=["liver"])
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "liver"
    sources = source_datasets(vol)  # native slice order
    uid_to_slice = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
    from radfm.io.orientation import to_native

    native = to_native(mask, vol.native)  # (columns, rows, slices)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    seen = set()
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k = uid_to_slice[ref]
        seen.add(k)
        np.testing.assert_array_equal(frames[f], native[:, :, k].T)  # rows × columns of that source slice
        pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(pos, np.asarray(sources[k].ImagePositionPatient, float), atol=1e-3)
    assert seen == set(np.flatnonzero(native.any(axis=(0, 1))).tolist())  # empty slices omitted, no others
    # the SEG carries the study's patient module (DICOM requires it) but nothing of it reaches the logs
    patient = [str(sources[0].get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate")]
    assert str(ds.get("PatientID", "")) == str(sources[0].get("PatientID", ""))
    assert not any(v and v in caplog.text for v in patient)


def test_dicom_seg_needs_a_dicom_input(tmp_path: Path) -> None:
    from segtest_utils import blob_volume

    vol = blob_volume()
    with pytest.raises(InputError, match="needs an image read from a DICOM series"):
        write_dicom_seg(np.ones(vol.shape, np.uint8), vol, tmp_path / "x.dcm")
