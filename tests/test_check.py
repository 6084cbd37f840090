"""Tests of the input check (radfm.check): every error code on a small synthetic CT phantom, absent on
the clean phantom; the axis-order heuristic on real CT (../shared/data); check_path on broken files.

The phantom is simulated here (numpy): body ellipse ~40 HU in air −1000 HU, organs −120…250 HU,
spine 700 HU, Gaussian noise. Thick slices are simulated by averaging sub-slices.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radfm.check import CheckReport, Finding, check_path, check_volume, require_valid
from radfm.errors import InputError
from radfm.io.volume import NativeGrid, Volume

BIG = 1 << 40  # memory budget that never triggers too_large, so tests do not depend on this machine


def ct_phantom(shape: tuple[int, int, int] = (48, 48, 40),
               spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
               *, seed: int = 0, sub: int = 1, noise: float = 15.0) -> np.ndarray:
    """CT-like phantom in HU, (X, Y, Z) float32; ``sub`` > 1 averages that many sub-slices per slice."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = (np.arange(nz * sub) - (nz * sub - 1) / 2) * (sz / sub)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    ext = np.array([nx * sx, ny * sy, nz * sz]) / 2
    img = np.full(X.shape, -1000.0, dtype=np.float32)
    grow = 1 + 0.15 * np.sin(Z / ext[2] * 2.5)
    body = (X / (0.85 * ext[0] * grow)) ** 2 + (Y / (0.65 * ext[1] * grow)) ** 2 <= 1
    img[body] = 40.0
    for _ in range(14):
        c = rng.uniform(-0.5, 0.5, 3) * ext * np.array([1.2, 0.9, 1.6])
        r = rng.uniform(0.08, 0.22, 3) * ext.min()
        organ = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1
        img[organ & body] = rng.uniform(-120, 250)
    img[(X / (0.12 * ext[0])) ** 2 + ((Y + 0.4 * ext[1]) / (0.12 * ext[1])) ** 2 <= 1] = 700.0
    if sub > 1:
        img = img.reshape(nx, ny, nz, sub).mean(axis=3)
    return img + rng.normal(0, noise, img.shape).astype(np.float32)


def volume(array: np.ndarray, spacing: tuple[float, float, float] = (1.5, 1.5, 1.5), modality: str = "CT",
           **kw) -> Volume:
    return Volume(array=array, affine=np.diag([*spacing, 1.0]), modality=modality, **kw)


def check(vol: Volume, **kw) -> CheckReport:
    kw.setdefault("memory_budget_bytes", BIG)
    return check_volume(vol, **kw)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return ct_phantom()


def test_clean_phantom_passes(phantom: np.ndarray) -> None:
    report = check(volume(phantom))
    assert report.ok, report.format()
    assert not report.warnings, report.format()
    s = report.summary
    assert s["shape"] == [48, 48, 40] and s["spacing_mm"] == [1.5, 1.5, 1.5]
    assert s["orientation"] == "RAS" and s["modality"] == "CT" and s["modality_source"] == "declared"
    assert s["p0.5"] < -900 and s["min"] <= s["p50"] <= s["max"] and 100 < s["p99.5"] <= 800
    assert s["memory_mib"] == pytest.approx(phantom.size * 4 * 6 / 2**20)
    assert s["axes_check"]["judged"] is False  # isotropic volumes are not judged
    assert report.format().splitlines()[-1].startswith("OK")


def test_nan_values(phantom: np.ndarray) -> None:
    a = phantom.copy()
    a[:3, :4, :5] = np.nan
    a[0, 0, 39] = np.inf
    report = check(volume(a))
    (f,) = [f for f in report.errors if f.code == "nan_values"]
    assert "61 voxels" in f.message and "NaN and ±Inf" in f.message and "nan_to_num" in f.hint
    assert report.summary["min"] == pytest.approx(float(np.nanmin(phantom[np.isfinite(a)])))
    assert "nan_values" not in check(volume(phantom)).codes()


@pytest.mark.parametrize("shape", [(32, 32), (8, 8, 8, 2, 2), (8, 8, 8, 20)])
def test_not_3d(shape: tuple[int, ...]) -> None:
    report = check(volume(np.zeros(shape, np.float32)))
    assert "not_3d" in report.codes("error")
    assert "not_3d" not in check(volume(np.stack([ct_phantom((16, 16, 16))] * 2, axis=-1))).codes()


def test_empty_and_constant_volume(phantom: np.ndarray) -> None:
    assert "empty_volume" in check(volume(np.zeros((0, 16, 16), np.float32))).codes("error")
    report = check(volume(np.full((16, 16, 16), -1000, np.int16)))
    assert "constant_volume" in report.codes("error")
    assert not {"empty_volume", "constant_volume"} & check(volume(phantom)).codes()


def _raw_stored(hu: np.ndarray) -> np.ndarray:
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)  # 12-bit storage, intercept −1024 not applied


@pytest.mark.parametrize("kind", ["raw", "unit", "8bit", "zscore"])
def test_ct_not_hu(phantom: np.ndarray, kind: str) -> None:
    bad = {"raw": _raw_stored(phantom),
           "unit": np.clip((phantom + 1024) / 4095, 0, 1).astype(np.float32),
           "8bit": (np.clip((phantom + 160) / 400, 0, 1) * 255).astype(np.uint8),
           "zscore": ((phantom - phantom.mean()) / phantom.std()).astype(np.float32)}[kind]
    report = check(volume(bad))
    (f,) = [f for f in report.errors if f.code == "ct_not_hu"]
    assert "RescaleSlope" in f.hint and "--modality MR" in f.hint
    # the same intensities from the DICOM header's modality are flagged too; declared MR is not
    assert "ct_not_hu" in check(volume(bad, meta={"modality_source": "header"})).codes("error")
    assert "ct_not_hu" not in check(volume(bad), modality="MR").codes()
    assert "ct_not_hu" not in check(volume(phantom)).codes()


def test_modality_detected_and_mismatch(phantom: np.ndarray) -> None:
    report = check(volume(phantom, modality="unknown"))
    assert report.ok and "modality_detected" in report.codes("info")
    assert (report.summary["modality"], report.summary["modality_source"]) == ("CT", "detected")
    mr = check(volume(phantom), modality="MR")
    assert "modality_mismatch" in mr.codes("warning") and mr.summary["modality_source"] == "declared"
    mr_like = check(volume(phantom + 1000, modality="MR"))
    assert not {"modality_mismatch", "modality_detected"} & mr_like.codes()
    assert "bad_modality" in check(volume(phantom), modality="ultrasoundish").codes("error")


def test_ct_range_padding_and_metal(phantom: np.ndarray) -> None:
    a = phantom.copy()
    a[:6, :6, :] = -3024  # padding outside the reconstructed field of view
    a[20, 20, 20] = 6000  # metal
    report = check(volume(a))
    assert report.ok
    msgs = " ".join(f.message for f in report.warnings if f.code == "ct_range")
    assert "padding" in msgs and "metal" in msgs
    assert "ct_range" not in check(volume(phantom)).codes()


def test_intensity_outliers_non_ct(phantom: np.ndarray) -> None:
    mr = phantom + 1000
    mr[1, 1, 1] = 1e7
    assert "intensity_outliers" in check(volume(mr, modality="MR")).codes("warning")
    assert "intensity_outliers" not in check(volume(phantom + 1000, modality="MR")).codes()


def test_dtype() -> None:
    assert "dtype" in check(volume(np.zeros((8, 8, 8), bool))).codes("error")
    assert "dtype" in check(volume(np.ones((8, 8, 8), np.complex64))).codes("error")
    report = check(volume(ct_phantom((24, 24, 20)).astype(np.float64)))
    assert report.ok and "dtype" in report.codes("info")
    assert "dtype" not in check(volume(ct_phantom((24, 24, 20)))).codes()


def test_orientation_spacing_and_obliquity(phantom: np.ndarray) -> None:
    singular = Volume(phantom, np.diag([1.5, 1.5, 0.0, 1.0]), modality="CT")
    assert "orientation" in check(singular).codes("error")
    nan_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nan_affine[0, 3] = np.nan
    assert "orientation" in check(Volume(phantom, nan_affine, modality="CT")).codes("error")

    lps = np.diag([-1.5, -1.5, 1.5, 1.0])
    ornt = np.array([[0, -1], [1, -1], [2, 1]])
    native = NativeGrid(affine=lps, shape=phantom.shape, ornt=ornt, fmt="sitk",
                        header={"spacing": (1.5, -1.5, 1.5)})
    report = check(volume(phantom, native=native))
    assert report.summary["orientation"] == "LPS" and report.summary["canonical_orientation"] == "RAS"
    assert "bad_spacing" in report.codes("error")
    good = NativeGrid(affine=lps, shape=phantom.shape, ornt=ornt, fmt="sitk", header={"spacing": (1.5,) * 3})
    assert check(volume(phantom, native=good)).ok

    t = np.radians(12)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    oblique = check(Volume(phantom, rot @ np.diag([1.5, 1.5, 1.5, 1.0]), modality="CT"))
    assert oblique.ok and "oblique" in oblique.codes("info") and "12.0°" in oblique.findings[0].message
    sheared = np.diag([1.5, 1.5, 1.5, 1.0])
    sheared[0, 2] = 0.3  # gantry tilt
    assert "oblique" in check(Volume(phantom, sheared, modality="CT")).codes("info")
    assert "oblique" not in check(volume(phantom)).codes()


def test_anisotropic_warning() -> None:
    thick = ct_phantom((48, 48, 12), (1.0, 1.0, 4.0), sub=4)
    report = check(volume(thick, (1.0, 1.0, 4.0)))
    assert report.ok and "anisotropic" in report.codes("warning"), report.format()
    assert "anisotropic" not in check(volume(ct_phantom((48, 48, 20), (1.0, 1.0, 2.5), sub=5),
                                             (1.0, 1.0, 2.5))).codes()


def test_axes_swapped_synthetic() -> None:
    spacing = (1.0, 1.0, 2.5)
    a = ct_phantom((64, 64, 24), spacing, sub=5)
    clean = check(volume(a, spacing))
    assert clean.ok and "axes_swapped" not in clean.codes(), clean.format()
    assert clean.summary["axes_check"]["judged"] and clean.summary["axes_check"]["data_thick_axis"] == 2
    swapped = check(volume(np.swapaxes(a, 0, 2), spacing))
    (f,) = [f for f in swapped.errors if f.code == "axes_swapped"]
    assert "transposed" in f.hint and swapped.summary["axes_check"]["data_thick_axis"] == 0


def test_axes_shape_only_warning() -> None:
    # Structureless noise: the texture cue cannot decide, but 64 voxels along a 3 mm axis beside a
    # 64×64 matrix whose other side has only 20 is the shape of a transposed stack.
    noise = np.random.default_rng(0).normal(100, 10, (20, 64, 64)).astype(np.float32)
    report = check(volume(noise, (1.0, 1.0, 3.0), modality="MR"))
    assert "axes_swapped" in report.codes("warning") and report.ok
    assert "axes_swapped" not in check(volume(noise, (3.0, 1.0, 1.0), modality="MR")).codes()


def test_too_large(phantom: np.ndarray) -> None:
    need = phantom.size * 4 * 6
    report = check(volume(phantom), memory_budget_bytes=need // 2)
    (f,) = [f for f in report.errors if f.code == "too_large"]
    assert "sliding-window" in f.hint and "Crop" in f.hint
    assert "too_large" in check(volume(phantom), memory_budget_bytes=int(need * 1.5)).codes("warning")
    assert "too_large" not in check(volume(phantom), memory_budget_bytes=need * 3).codes()
    assert check_volume(volume(phantom)).summary["memory_budget_mib"] > 0  # psutil path


def test_report_json_format_and_raise(phantom: np.ndarray) -> None:
    a = _raw_stored(phantom).astype(np.float32)
    a[0, 0, 0] = np.nan
    report = check(volume(a))
    assert {"nan_values", "ct_not_hu"} <= report.codes("error") and not report.ok
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["ok"] is False and d["summary"]["spacing_mm"] == [1.5, 1.5, 1.5]
    text = report.format()
    assert any(line.startswith("ERROR  ct_not_hu: ") and " — " in line for line in text.splitlines())
    assert text.splitlines()[-1].startswith("NOT USABLE: 2 errors")
    with pytest.raises(InputError) as err:
        report.raise_for_errors()
    msg = str(err.value)
    for f in report.errors:
        assert f.code in msg and f.hint in msg
    check(volume(phantom)).raise_for_errors()  # no error, no exception
    assert Finding("warning", "x", "m").format() == "WARN   x: m"


def test_require_valid(phantom: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InputError, match="nan_to_num"):
        bad = phantom.copy()
        bad[0, 0, 0] = np.nan
        require_valid(volume(bad))
    pad = phantom.copy()
    pad[:6, :6, :] = -3024
    with caplog.at_level(logging.WARNING, logger="radfm.check"):
        report = require_valid(volume(pad))
    assert report.ok and any("ct_range" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------- files


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_check_path_valid_nifti(tmp_path: Path) -> None:
    lps = np.diag([-1.5, -1.5, 1.5, 1.0])  # stored L→R flipped: native orientation LPS
    path = _nifti(tmp_path / "ct.nii.gz", ct_phantom((32, 32, 24)).astype(np.int16), lps)
    before = _sha(path)
    report = check_path(path, modality="CT", memory_budget_bytes=BIG)
    assert report.ok, report.format()
    assert report.path == str(path) and report.summary["orientation"] == "LPS"
    assert report.summary["modality_source"] == "declared" and _sha(path) == before


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "garbage_nrrd", "missing"])
def test_check_path_broken_files_never_raise(tmp_path: Path, kind: str) -> None:
    good = _nifti(tmp_path / "good.nii.gz", ct_phantom((32, 32, 24)), np.eye(4))
    path = {"empty": tmp_path / "empty.nii.gz", "truncated": tmp_path / "trunc.nii.gz",
            "garbage": tmp_path / "garbage.nii", "garbage_nrrd": tmp_path / "garbage.nrrd",
            "missing": tmp_path / "nope.nii.gz"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind.startswith("garbage"):
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    before = _sha(path) if path.exists() else None
    report = check_path(path)
    assert not report.ok and report.codes("error") == {"load_failed"}, report.format()
    (f,) = report.errors
    assert f.message and f.hint and report.summary == {"loaded": False}
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["ok"] is False
    assert "load_failed" in report.format()
    if before is not None:
        assert _sha(path) == before
    assert gzip.decompress(good.read_bytes())  # the source of the truncation is intact


def test_check_path_reader_crash_becomes_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import radfm.io

    def boom(*args, **kwargs):
        raise RuntimeError("reader exploded")

    monkeypatch.setattr(radfm.io, "load_volume", boom)
    report = check_path(tmp_path / "x.nii.gz")
    # the exception's type is named; its text is not echoed (it may quote header values)
    assert report.codes() == {"load_failed"} and "RuntimeError" in report.errors[0].message
    assert "reader exploded" not in report.errors[0].message


# ----------------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_check_path_mixed_dicom_series(shared_data: Path, tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(shared_data / "dicom" / name, tmp_path / name)
    report = check_path(tmp_path)
    assert report.codes("error") == {"mixed_series"}, report.format()
    assert "--series" in report.errors[0].hint


@pytest.mark.shared_data
@pytest.mark.parametrize("rel", ["seg3d/pyradiomics/lung1_image.nrrd",
                                 "seg3d/totalsegmentator/example_ct_dicom"])
def test_axes_swapped_real_ct(shared_data: Path, rel: str) -> None:
    """Real CT (lung1: 0.57×0.57×5 mm NRRD; example_ct_dicom: 0.98×0.98×2 mm DICOM with 3 mm slices
    every 2 mm, so its z neighbours differ *less* than in-plane ones): the correct volume passes,
    the same array with axes 0↔2 (and 1↔2) swapped under the original affine is flagged."""
    from radfm.io import load_volume

    path = shared_data / rel
    report = check_path(path, memory_budget_bytes=BIG)
    assert report.ok and "axes_swapped" not in report.codes(), report.format()
    assert report.summary["orientation"] == "LPS" and report.summary["modality"] == "CT"
    ax = report.summary["axes_check"]
    assert ax["judged"] and ax["data_thick_axis"] == ax["affine_thick_axis"] == 2

    vol = load_volume(path)
    swapped = Volume(np.swapaxes(vol.array, 0, 2), vol.affine, modality=vol.modality, meta=vol.meta)
    bad = check(swapped)
    assert "axes_swapped" in bad.codes("error"), bad.format()
    assert bad.summary["axes_check"]["data_thick_axis"] == 0 and bad.summary["axes_check"]["margin"] >= 2
    swapped12 = Volume(np.swapaxes(vol.array, 1, 2), vol.affine, modality=vol.modality, meta=vol.meta)
    assert "axes_swapped" in check(swapped12).codes()  # error on lung1, shape warning on the DICOM
