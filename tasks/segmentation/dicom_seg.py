"""DICOM SEG output (highdicom) for masks predicted on a DICOM series.

Why its own module: a SEG must reference the exact source instances (SOP Instance UIDs, frame by
frame) and carry the study's patient/study modules, so it needs the source datasets themselves,
not just the geometry ``radfm.io`` kept. They are re-read here from ``volume.native.source`` with
pydicom, sorted exactly as the reader sorted them (position along the slice normal), and checked
against the volume's stored affine before anything is written: a SEG that would not overlay the
series voxel for voxel is refused.

Privacy: patient and study identifiers are copied into the SEG file (DICOM requires them there; it
is the output the user asked for) but never into logs, exceptions or return values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radfm import __version__
from radfm.errors import InputError
from radfm.io.coords import LPS_TO_RAS
from radfm.io.orientation import to_native
from radfm.io.volume import Volume

__all__ = ["source_datasets", "write_dicom_seg"]

log = logging.getLogger(__name__)


def source_datasets(volume: Volume) -> list:
    """The pydicom datasets of ``volume``'s series, in native slice order (index k = native slice k).

    Raises InputError when the volume was not read from a DICOM series folder, or the files no longer
    match its geometry.
    """
    import pydicom

    from radfm.io.dicom import select_series

    native = volume.native
    if native is None or native.fmt != "dicom-series" or not native.source:
        fmt = native.fmt if native is not None else "an in-memory array"
        raise InputError(f"DICOM SEG output needs an image read from a DICOM series folder; this one is {fmt}.",
                         "Write the mask as NIfTI (--out mask.nii.gz) instead.")
    folder = Path(native.source)
    if not folder.is_dir():
        raise InputError(f"the source DICOM folder {folder} is no longer there.")
    files = select_series(folder, volume.meta.get("series_index"))
    datasets = [pydicom.dcmread(str(p)) for p in files.files]
    for ds in datasets:
        # Some exports (anonymisers) leave SOP Class/Instance UID empty in the data set but keep them in
        # the file meta header; highdicom needs them in the data set (in memory only, files untouched).
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if not ds.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
                ds.SOPClassUID = meta.MediaStorageSOPClassUID
            if not ds.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
                ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
            raise InputError("a file of the source series has no SOP Class/Instance UID, so a DICOM SEG cannot "
                             "reference it.", "Write the mask as NIfTI instead.")
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    order = sorted(range(len(datasets)), key=lambda n: float(np.asarray(datasets[n].ImagePositionPatient, float) @ normal))
    datasets = [datasets[n] for n in order]
    if len(datasets) != native.shape[2]:
        raise InputError(f"the series now has {len(datasets)} slices, the image had {native.shape[2]}.")
    # The first sorted slice's position must be the native affine's origin (LPS ↔ RAS).
    origin_lps = (LPS_TO_RAS @ native.affine)[:3, 3]
    if not np.allclose(np.asarray(datasets[0].ImagePositionPatient, float), origin_lps, atol=1e-3):
        raise InputError("the DICOM files do not match the geometry the image was read with.",
                         "Read the series again and segment it before writing a SEG.")
    return datasets


def write_dicom_seg(mask: np.ndarray, volume: Volume, path: str | Path, *, label: str = "radfm segmentation",
                    description: str = "Prompt-based segmentation (research use, draft for review)",
                    segment_labels: Sequence[str] | None = None) -> Path:
    """Write a binary (or multi-label) canonical mask as a DICOM SEG referencing ``volume``'s source series.

    Args:
        mask: ``(X, Y, Z)`` canonical mask on ``volume``'s grid (0 = background, 1..K = segments).
        volume: the image as loaded from the DICOM series folder (``radfm.io.load_volume``).
        path: output ``.dcm`` file.
        label: content label / series description stem.
        segment_labels: names of segments 1..K (default "segment k").
    Returns:
        The path written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian

    arr = np.asarray(mask)
    if arr.shape[:3] != tuple(volume.shape):
        raise InputError(f"mask shape {arr.shape} does not match the image's canonical shape {volume.shape}.")
    datasets = source_datasets(volume)
    native = to_native(arr.astype(np.uint8), volume.native)  # (columns, rows, slices)
    frames = np.ascontiguousarray(np.transpose(native, (2, 1, 0)))  # (slices, rows, columns)
    n_seg = int(frames.max())
    if n_seg == 0:
        raise InputError("the mask is empty; there is nothing to write as a DICOM SEG.",
                         "Check the prompt (the model found no object there).")
    names = list(segment_labels or [f"segment {k}" for k in range(1, n_seg + 1)])
    algorithm = hd.AlgorithmIdentificationSequence(name="radfm promptseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=names[k - 1][:64],
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for k in range(1, n_seg + 1)
    ]
    pixel = frames if n_seg > 1 else frames.astype(bool)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radfm", manufacturer_model_name="radfm promptseg",
        software_versions=__version__, device_serial_number="0", content_label="RADFMSEG",
        content_description=description[:64], series_description=label[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=True,
    )
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(out))
    log.info("wrote DICOM SEG %s (%d segment(s), %d frame(s))", out.name, n_seg, int(seg.NumberOfFrames))
    return out
