"""DICOM SEG output (highdicom) for masks predicted on a DICOM series.

Why its own module: a SEG must reference the exact source instances (SOP Instance UIDs, frame by
frame) and carry the study's patient/study modules, so it needs the source datasets themselves,
not just the geometry ``radfm.io`` kept (``radfm.io.dicom.source_datasets`` re-reads and checks
them): a SEG that would not overlay the series voxel for voxel is refused.

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
from radfm.io.dicom import source_datasets
from radfm.io.orientation import to_native
from radfm.io.volume import Volume

__all__ = ["write_dicom_seg"]

log = logging.getLogger(__name__)


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
