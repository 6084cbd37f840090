"""Shared fixtures. Real data lives in ../shared/data and is never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    candidates = [os.environ.get("RADFM_SHARED_DATA", ""), str(REPO.parent / "shared" / "data")]
    for c in candidates:
        if c and Path(c, "MANIFEST.md").is_file():
            return Path(c)
    return None


SHARED = _shared_data_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data (real CT/MRI/DICOM/reports); skips the test when absent."""
    if SHARED is None:
        pytest.skip("real test data not found: set RADFM_SHARED_DATA or place it at ../shared/data")
    return SHARED


@pytest.fixture(scope="session")
def ct_dicom_series(shared_data: Path) -> Path:
    """The real 20-slice CT DICOM series (TotalSegmentator example) in ../shared/data."""
    path = shared_data / "seg3d" / "totalsegmentator" / "example_ct_dicom"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
