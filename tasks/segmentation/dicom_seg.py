"""DICOM SEG output (highdicom) for masks predicted on a DICOM series.

Why its own module: a SEG must reference the exact source instances (SOP Instance UIDs, frame by
frame) and carry the study's patient/study modules, so it needs the source datasets themselves,
not just the geometry ``radfm.io`` kept (``radfm.io.dicom.source_datasets`` re-reads and checks
them): a SEG that would not overlay the series voxel for voxel is refused.

Privacy: by default patient and study identifiers are copied into the SEG file (DICOM requires the
patient/study modules there; it is the output the user asked for) but never into logs, exceptions
or return values. With ``deidentify=True`` the SEG is built from copies of the sources passed
through PS3.15 Annex E (basic profile, :class:`radfm.phi.Deidentifier`: names/IDs/dates emptied
or replaced, UIDs remapped consistently, private tags removed), and the written SEG is checked by
the same table once more.
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
from radfm.phi import derived_sources, exc_text

__all__ = ["write_dicom_seg"]

log = logging.getLogger(__name__)

# Written by radfm itself (no patient data): left as they are by the second de-identification pass.
_OWN_SEG = {0x0062_0002, 0x0008_103E, 0x0070_0081, 0x0070_0080, 0x0018_1000, 0x0008_1090}
# Type 1/2 attributes of the SEG IOD that Annex E lists with X/Z/D choices: replaced, not removed.
_REQUIRED = {0x0008_0020, 0x0008_0030, 0x0008_0050, 0x0008_0090, 0x0010_0010, 0x0010_0020, 0x0010_0030,
             0x0010_0040, 0x0020_0010, 0x0008_0023, 0x0008_0033, 0x0008_1115, 0x0008_9124, 0x0008_2112}


def write_dicom_seg(mask: np.ndarray, volume: Volume, path: str | Path, *, label: str = "radfm segmentation",
                    description: str = "Prompt-based segmentation (research use, draft for review)",
                    segment_labels: Sequence[str] | None = None, deidentify: bool = False) -> Path:
    """Write a binary (or multi-label) canonical mask as a DICOM SEG referencing ``volume``'s source series.

    Args:
        mask: ``(X, Y, Z)`` canonical mask on ``volume``'s grid (0 = background, 1..K = segments).
        volume: the image as loaded from the DICOM series folder (``radfm.io.load_volume``).
        path: output ``.dcm`` file.
        label: content label / series description stem.
        segment_labels: names of segments 1..K (default "segment k").
        deidentify: apply PS3.15 Annex E basic profile (no patient data in the SEG).
    Returns:
        The path written.
    """
    from radfm.io.dicom import import_highdicom

    hd = import_highdicom("DICOM SEG")
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian

    arr = np.asarray(mask)
    if arr.shape[:3] != tuple(volume.shape):
        raise InputError(f"mask shape {arr.shape} does not match the image's canonical shape {volume.shape}.")
    datasets, deid = derived_sources(source_datasets(volume), deidentify=deidentify)
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
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radfm",
            manufacturer_model_name="radfm promptseg", software_versions=__version__, device_serial_number="0",
            content_label="RADFMSEG", content_description=description[:64], series_description=label[:64],
            transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom refusing a source header value
        raise InputError(f"the source series' headers do not allow a DICOM SEG ({exc_text(exc, datasets)}).",
                         "Write NIfTI output instead, or fix the headers.") from None
    if deid is not None:
        deid.apply(seg, keep=_OWN_SEG, required=_REQUIRED)
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(out))
    log.info("wrote DICOM SEG %s (%d segment(s), %d frame(s))", out.name, n_seg, int(seg.NumberOfFrames))
    return out
