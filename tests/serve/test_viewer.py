"""``/viewer`` end to end in headless Chromium: open a study, click +, see the mask, click −, export.

The page is driven as a user would (Playwright on Debian's chromium, WebGL through SwiftShader):
upload a CT phantom stored in LPS order, click the liver on the canvas, and check that the mask
the page received equals the in-process predictor's for the same world point, overlaps the liver,
and is drawn (red overlay pixels in a screenshot, none before the click). Needs
``scripts/setup_viewer.sh`` (NiiVue from npm, chromium from apt; part of ``make test``).
"""

from __future__ import annotations

import base64
import io
import shutil

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from radfm.data.phantom import make_phantom
from radfm.serve.app import ServeSettings, create_app
from radfm.serve.viewer import niivue_js_path

KEY = "viewer-test-key-0123456789abcdef"
LIVER = 5
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: world mm → page pixel of the canvas (NiiVue's canvas is in device pixels).
TO_SCREEN = """(mm) => { const nv = window.radfmNiivue; const p = nv.frac2canvasPos(nv.mm2frac(mm));
    const r = nv.canvas.getBoundingClientRect(); const d = window.devicePixelRatio || 1;
    return [r.left + p[0] / d, r.top + p[1] / d]; }"""


def _missing() -> str | None:
    if CHROMIUM is None:
        return "no chromium (bash scripts/setup_viewer.sh installs Debian's)"
    if not niivue_js_path().is_file():
        return "NiiVue not installed (bash scripts/setup_viewer.sh fetches @niivue/niivue from npm)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (the [dev] extra)"
    return None


def test_viewer_page_and_library_need_no_key_but_the_api_does(tmp_path) -> None:
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path, routers=("segmentation",)), backend=None)
    with TestClient(app) as c:
        page = c.get("/viewer")
        assert page.status_code == 200 and "/viewer/niivue.umd.js" in page.text and "X-API-Key" in page.text
        lib = c.get("/viewer/niivue.umd.js")
        assert lib.status_code == (200 if niivue_js_path().is_file() else 503)
        assert c.post("/viewer").status_code == 401  # only GET of the two static paths is public
        assert c.get("/health").status_code == 401 and c.post("/v1/sessions").status_code == 401


def _red_pixels(png: bytes) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 140) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A CT phantom written in LPS voxel order (as DICOM-derived NIfTI often are), and its liver centre in mm."""
    case = make_phantom(3, shape=(64, 64, 48), spacing=(3.0, 3.0, 3.0), modality="CT", n_lesions=0)
    ras = nib.Nifti1Image(case.image.array.astype(np.float32), case.image.affine)
    lps = ras.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    path = tmp_path_factory.mktemp("study") / "ct_lps.nii.gz"
    nib.save(lps, path)
    liver = case.labels.array == LIVER
    from scipy import ndimage

    centre = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(liver))), liver.shape)
    mm = (case.image.affine @ np.array([*centre, 1.0]))[:3]
    return {"path": path, "liver": liver, "mm": mm.tolist(), "case": case}


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_clicks_in_the_browser_give_the_mask_of_the_session_api(study, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    from radfm.eval.benchmarks.sessions import _Server
    from radfm.io import load_volume
    from radfm.tasks.segmentation.model_cache import get_segmenter
    from radfm.tasks.segmentation.predictor import SegPredictor

    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp_path, routers=("segmentation",)), backend=None)
    with _Server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                                           "--ignore-gpu-blocklist", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 700}, device_scale_factor=1)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/viewer")
        page.fill("#key", KEY)
        page.set_input_files("#file", str(study["path"]))
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('click')",
                               timeout=120_000)
        # one axial view through the liver centre, then a real mouse click on the liver
        page.evaluate("(mm) => { const nv = window.radfmNiivue; nv.setSliceType(nv.sliceTypeAxial);"
                      " nv.scene.crosshairPos = nv.mm2frac(mm); nv.drawScene(); }", study["mm"])
        xy = page.evaluate(TO_SCREEN, study["mm"])
        before = _red_pixels(page.screenshot(path=str(tmp_path / "viewer_before.png")))
        page.mouse.click(xy[0], xy[1])
        page.wait_for_function("() => window.radfmViewer.last !== null && !window.radfmViewer.busy", timeout=120_000)
        page.wait_for_timeout(500)  # the overlay's first frame
        after = _red_pixels(page.screenshot(path=str(tmp_path / "viewer.png")))
        sent = page.evaluate("() => window.radfmViewer.points")
        mask_b64 = page.evaluate("() => window.radfmViewer.last.mask_nifti_gz_b64")
        assert page.evaluate("() => !document.getElementById('export').classList.contains('disabled')")
        # a background click elsewhere changes the answer (the page sends every click each time)
        far = [study["mm"][0] + 30.0, study["mm"][1], study["mm"][2]]
        n_before = page.evaluate("() => window.radfmViewer.last.voxels")
        xy2 = page.evaluate(TO_SCREEN, far)
        page.click("#bg")
        page.mouse.click(xy2[0], xy2[1])
        page.wait_for_function("() => window.radfmViewer.points.length === 2 && !window.radfmViewer.busy",
                               timeout=120_000)
        labels = page.evaluate("() => window.radfmViewer.labels")
        browser.close()
    assert not errors, errors
    assert labels == [1, 0]
    # the clicked point is the liver centre the test aimed at (within a voxel and a half)
    assert np.linalg.norm(np.asarray(sent[0]) - np.asarray(study["mm"])) < 4.5, (sent[0], study["mm"])
    # the page's mask is the session API's answer for that world point, on the upload's grid
    got = tmp_path / "mask.nii.gz"
    got.write_bytes(base64.b64decode(mask_b64))
    page_mask = load_volume(got).array > 0
    volume = load_volume(study["path"])
    predictor = SegPredictor(get_segmenter(None))
    predictor.set_volume(volume)
    expected = predictor.predict(points=[sent[0]], labels=[1], coords="world").mask > 0
    assert page_mask.shape == expected.shape and (page_mask == expected).mean() > 0.999
    liver = study["liver"]
    dice = 2 * (page_mask & liver).sum() / (page_mask.sum() + liver.sum())
    assert dice > 0.3, dice
    assert before < 50 and after > 300, (before, after)  # the overlay is drawn, and only after the click
    assert n_before > 0
