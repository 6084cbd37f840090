"""Series Description (PS3.15 Annex E: X/Z/D, free text sites fill with names) never leaves the reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from canary import build_series

from radfm.errors import InputError
from radfm.io import load_volume
from radfm.io.dicom import SAFE_TAGS, select_series
from radfm.phi import ALLOWED_TAGS


def test_safe_tags_are_the_phi_allowlist() -> None:
    assert "SeriesDescription" not in SAFE_TAGS and set(SAFE_TAGS) == set(ALLOWED_TAGS)


def test_meta_and_series_listing_hold_no_description(tmp_path: Path) -> None:
    c = build_series(tmp_path / "series", n=3)
    vol = load_volume(tmp_path / "series")
    assert c.find(repr(vol.meta)) == [] and vol.meta["series_number"] == 7
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(tmp_path / "series" / "slice000.dcm", two / "a.dcm")
    ds = pydicom.dcmread(tmp_path / "series" / "slice001.dcm")
    ds.SeriesInstanceUID, ds.SeriesNumber = ds.SeriesInstanceUID + ".99", 8
    ds.save_as(two / "b.dcm")
    with pytest.raises(InputError) as err:
        select_series(two, None)
    text = str(err.value)
    assert c.find(text) == [] and "series number 7, CT" in text and "series number 8, CT" in text
