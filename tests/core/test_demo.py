"""`radfm demo` writes a page that shows the simulated case, its check and its findings."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from PIL import Image

from radfm.data.phantom import make_phantom
from radfm.demo import run_demo


def test_demo_page_shows_case_check_and_findings(tmp_path):
    index = run_demo(tmp_path / "demo", seed=3, shape=(64, 64, 64), sections=[])
    html = index.read_text()
    case = make_phantom(3, modality="CT", shape=(64, 64, 64), spacing=(2.0, 2.0, 2.0))
    assert "simulated" in html.lower()
    assert "OK: usable" in html  # the input check ran on the written NIfTI and passed
    for f in case.findings:
        assert f.finding in html and f.location in html
    assert case.report.impression_text.split(".")[0] in html
    # the NIfTI the demo wrote is the phantom, voxel for voxel
    written = nib.load(tmp_path / "demo" / "case_ct.nii.gz")
    assert np.allclose(np.asarray(written.dataobj), case.image.array)
    png = Image.open(tmp_path / "demo" / "phantom_labels.png")
    px = np.asarray(png.convert("RGB")).astype(int)
    assert png.size[0] > 600 and px.std() > 20  # a real picture, not a blank canvas


def test_failing_section_is_reported_not_fatal(tmp_path, monkeypatch):
    from radfm import registry

    def broken(ctx):
        raise RuntimeError("section exploded")

    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda group, name: broken if name == "broken" else real_load(group, name))
    index = run_demo(tmp_path / "d", seed=1, shape=(48, 48, 48), sections=["broken"])
    html = index.read_text()
    assert "section exploded" in html and "failed" in html
