"""PHI: canary series through the DICOM SEG writer (default and --deidentify), the allowlist, the missing extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from canary import Canary, build_series

from radfm.io import load_volume
from radfm.phi import ALLOWED_TAGS, annex_e_table, redact
from radfm.tasks.segmentation.dicom_seg import write_dicom_seg


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Canary]:
    folder = tmp_path_factory.mktemp("canary") / "series"
    return folder, build_series(folder)


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[40:80, 40:80, 1:4] = 1
    return m


def test_annex_e_table_holds_the_known_identifiers_and_no_allowed_tag() -> None:
    from pydicom.datadict import tag_for_keyword

    single, _ = annex_e_table()
    assert len(single) > 600
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyInstanceUID", "SeriesDescription"):
        assert tag_for_keyword(kw) in single, kw
    assert not [kw for kw in ALLOWED_TAGS if tag_for_keyword(kw) in single]


def test_deidentified_seg_holds_no_canary_by_two_readers(series: tuple[Path, Canary], tmp_path: Path) -> None:
    folder, c = series
    vol = load_volume(folder)
    path = write_dicom_seg(_mask(vol.shape), vol, tmp_path / "seg.dcm", deidentify=True)
    assert c.find(path.read_bytes(), dates=True) == []  # reader 1: the raw bytes
    ds = pydicom.dcmread(path)  # reader 2: pydicom, every element including nested ones
    assert ds.PatientIdentityRemoved == "YES" and ds.Modality == "SEG"
    assert c.find("\n".join(str(e.value) for e in ds.iterall() if e.tag != 0x7FE00010), dates=True) == []
    # references stay consistent: every frame references a UID of the (remapped) study
    refs = {str(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for i in ds.PerFrameFunctionalGroupsSequence}
    assert len(refs) == 3 and not any(r.startswith(c.uid_root) for r in refs)


def test_default_seg_copies_patient_module_but_references_the_source(series: tuple[Path, Canary], tmp_path: Path) -> None:
    folder, c = series
    vol = load_volume(folder)
    path = write_dicom_seg(_mask(vol.shape), vol, tmp_path / "seg.dcm")
    hits = c.find(path.read_bytes())
    assert "PatientName (0010,0010)" in hits and "StudyInstanceUID (0020,000D)" in hits  # by the standard
    assert not [h for h in hits if h.startswith("private")]  # private tags are never copied


def test_redact_withholds_dataset_values_and_file_tokens(series: tuple[Path, Canary]) -> None:
    folder, c = series
    f = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    msg = f"bad value {ds.PatientName} and {ds.InstitutionName}"
    assert c.find(redact(msg, [ds])) == [] and c.find(redact(msg, files=[f])) == []


_BLOCK = """
import sys, importlib.abc
class B(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('fastapi', 'uvicorn', 'multipart'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, B())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split('.')[0] in ('fastapi', 'uvicorn', 'multipart') else _find(name, package)
importlib.util.find_spec = find_spec
from radfm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_the_extra_names_it_in_one_line(tmp_path: Path) -> None:
    env = {"RADFM_API_KEY": "k" * 32, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _BLOCK, "serve"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0
    assert 'pip install "radfm[serve]"' in r.stderr and "Traceback" not in r.stderr
