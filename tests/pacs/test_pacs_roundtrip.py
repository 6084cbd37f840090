"""The PACS round trip against a real Orthanc: push a real CT series, list it without identifiers,
pull it back bit-identical in voxels, segment it, store the DICOM SEG in the same study.

The real series (TotalSegmentator's 20 CT slices) carries no study / series UIDs and no patient; a
temporary copy gets UIDs and a canary patient so that the tests can check nothing identifying is
printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radfm.cli import main
from radfm.errors import ConfigError, InputError
from radfm.io import load_volume
from radfm.pacs import PacsClient

CANARY = {"PatientName": "CANARY^PACS", "PatientID": "CANARY7731", "AccessionNumber": "ACC7731CANARY",
          "SeriesDescription": "CANARY series description"}


@pytest.fixture(scope="module")
def canary_series(ct_dicom_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real CT series with study / series UIDs and a canary patient."""
    from pydicom.uid import generate_uid

    out = tmp_path_factory.mktemp("canary_ct")
    study, series = generate_uid(), generate_uid()
    for k, f in enumerate(sorted(ct_dicom_series.glob("*"))):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, 3
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for key, value in CANARY.items():
            setattr(ds, key, value)
        ds.save_as(out / f"{k:03d}.dcm")
    return out


@pytest.fixture(scope="module")
def stored_study(orthanc: str, canary_series: Path) -> str:
    """The canary CT pushed once; its StudyInstanceUID."""
    result = PacsClient(orthanc).push([canary_series])
    assert (result.stored, result.failed) == (20, 0)
    return str(pydicom.dcmread(sorted(canary_series.glob("*"))[0], stop_before_pixels=True).StudyInstanceUID)


def _identifiers(series_dir: Path) -> list[str]:
    ds = pydicom.dcmread(sorted(series_dir.glob("*"))[0], stop_before_pixels=True)
    return [*CANARY.values(), "CANARY", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]


def test_series_are_listed_by_position_without_identifiers(orthanc: str, stored_study: str, canary_series: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pacs", "series", orthanc, "--study", stored_study, "--json"]) == 0
    assert main(["pacs", "series", orthanc, "--study", stored_study]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out.split("\n}\n")[0] + "\n}")["series"]
    assert listed == [{"index": 1, "modality": "CT", "series_number": 3, "instances": 20}]
    printed = captured.out + captured.err
    for value in _identifiers(canary_series):
        assert value not in printed


def test_pull_writes_the_series_and_it_loads_like_the_original(orthanc: str, stored_study: str,
                                                              canary_series: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["pacs", "pull", orthanc, "--study", stored_study, "--series-index", "1", "--out", str(out),
                 "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["instances"] == 20 and summary["series"] == [str(out / "series_001")]
    assert not any(v in printed.out + printed.err for v in _identifiers(canary_series))
    assert not (tmp_path / "study.partial").exists()
    pulled, original = load_volume(out / "series_001"), load_volume(canary_series)
    np.testing.assert_array_equal(pulled.array, original.array)
    np.testing.assert_allclose(pulled.affine, original.affine)
    # a second pull into the same (now non-empty) folder refuses and leaves it as it was
    before = sorted(p.name for p in (out / "series_001").iterdir())
    with pytest.raises(InputError, match="already exists"):
        PacsClient(orthanc).pull(stored_study, out)
    assert sorted(p.name for p in (out / "series_001").iterdir()) == before


def test_a_segmentation_goes_back_into_the_same_study(orthanc: str, stored_study: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    study = PacsClient(orthanc).pull(stored_study, tmp_path / "study").series[0]
    seg = tmp_path / "liver_seg.dcm"
    rc = main(["segment", str(study), "--point", "256,256,10", "--out", str(tmp_path / "m.nii.gz"),
               "--dicom-seg", str(seg), "--allow-empty", "--json"])
    assert rc == 0
    capsys.readouterr()
    assert str(pydicom.dcmread(seg).StudyInstanceUID) == stored_study  # not deidentified: it belongs to the study
    assert main(["pacs", "push", orthanc, str(seg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stored": 1, "failed": 0}
    listed = PacsClient(orthanc).series(stored_study)
    assert sorted((s.modality, s.instances) for s in listed) == [("CT", 20), ("SEG", 1)]


def test_objects_the_server_refuses_are_counted_as_failed(orthanc: str, ct_dicom_series: Path) -> None:
    """The real series as shipped has no UIDs: Orthanc answers 200 but stores nothing, and push says so."""
    first = sorted(ct_dicom_series.glob("*"))[0]
    assert PacsClient(orthanc).push([first]).failed == 1
    assert main(["pacs", "push", orthanc, str(first)]) == 4


def test_clear_errors_for_a_missing_study_an_unreachable_server_and_non_dicom(orthanc: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no series|not found"):
        PacsClient(orthanc).series("1.2.3.4.5.6.7.8.9")
    with pytest.raises(ConfigError, match="cannot reach"):
        PacsClient("http://127.0.0.1:9/dicom-web").series("1.2.3")
    with pytest.raises(InputError, match="digits and dots"):
        PacsClient(orthanc).series("1.2.3; DROP")
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(InputError, match="not a DICOM file"):
        PacsClient(orthanc).push([text])
    with pytest.raises(ConfigError, match="http"):
        PacsClient("ftp://pacs")


def test_the_server_segments_a_pacs_series_and_stores_the_seg(orthanc: str, stored_study: str, canary_series: Path,
                                                               tmp_path: Path) -> None:
    """``POST /v1/pacs/segment``: pull, segment, store back; the answer names no identifier."""
    from fastapi.testclient import TestClient

    from radfm.serve.app import ServeSettings, create_app

    key = "pacs-test-key-0123456789abcdef"
    auth = {"X-API-Key": key}
    before = {(s.modality, s.instances) for s in PacsClient(orthanc).series(stored_study)}
    app = create_app(ServeSettings(api_keys=(key,), tmp_dir=tmp_path, routers=("segmentation",), dicomweb_url=orthanc),
                     backend=None)
    with TestClient(app) as client:
        r = client.post("/v1/pacs/segment", headers=auth,
                        json={"study_uid": stored_study, "series_number": 3, "points": [[256, 300, 10]]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["is_research_output"] is True and body["voxels"] > 0
        assert body["pacs"] == {"stored": 1, "failed": 0}
        assert not any(v in r.text for v in _identifiers(canary_series))
        bad = client.post("/v1/pacs/segment", headers=auth, json={"study_uid": stored_study})
        assert bad.status_code == 400 and "empty prompt" in bad.text
    after = [(s.modality, s.instances) for s in PacsClient(orthanc).series(stored_study)]
    assert sum(m == "SEG" for m, _ in after) == sum(m == "SEG" for m, _ in before) + 1
    assert list(tmp_path.iterdir()) == [] or all(p.name.startswith("radfm-upload") for p in tmp_path.iterdir())
    no_pacs = create_app(ServeSettings(api_keys=(key,), tmp_dir=tmp_path, routers=("segmentation",)), backend=None)
    with TestClient(no_pacs) as client:
        r = client.post("/v1/pacs/segment", headers=auth, json={"study_uid": stored_study, "points": [[1, 1, 1]]})
        assert r.status_code == 400 and "--dicomweb-url" in r.text
