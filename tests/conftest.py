"""Shared fixtures. Real data lives in ../shared/data and is never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radfm.data.shared import shared_data_root


def _shared_data_dir() -> Path | None:
    """``radfm.data.shared_data_root()``, kept only when it holds the data (its MANIFEST.md)."""
    root = shared_data_root()
    return root if root is not None and (root / "MANIFEST.md").is_file() else None


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
