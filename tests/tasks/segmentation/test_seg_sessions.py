"""Interactive sessions (``/v1/sessions``) and the per-process model cache, through the real app.

A tiny random segmenter saved to a temp folder stands in for the shipped weights: these tests
check plumbing (caching, geometry, limits, errors), not segmentation quality.
"""

from __future__ import annotations

import base64
import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from segtest_utils import tiny_model

from radfm.errors import ResourceError
from radfm.io import load_volume, save_like
from radfm.serve.app import ServeSettings, create_app
from radfm.tasks.segmentation.model_cache import clear_segmenters, get_segmenter
from radfm.tasks.segmentation.predictor import SegPredictor
from radfm.tasks.segmentation.session_routes import STORE_KEY
from radfm.tasks.segmentation.sessions import SessionNotFoundError, SessionStore, estimate_nbytes

KEY = "session-test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
SHAPE = (30, 28, 26)
CLICK = [14, 12, 11]  # native voxel (i, j, k) of the files below, inside the bright blob


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seg-model") / "tiny"
    tiny_model().save_pretrained(folder)
    return folder


def _affine(kind: str) -> np.ndarray:
    """2 mm voxels stored RAS, flipped (LPS-like, as DICOM-derived NIfTI often are), or oblique and flipped."""
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    if kind == "flipped":
        a[:3, :3] = np.diag([-2.0, -2.0, 2.0])
    elif kind == "oblique":
        t = np.deg2rad(20.0)
        rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
        a[:3, :3] = rot @ np.diag([-2.0, 2.0, 2.0])
    a[:3, 3] = [-30.0, 12.0, -25.0]
    return a


def _ct(kind: str = "flipped") -> bytes:
    """An asymmetric CT-like .nii.gz (a bright off-centre blob), so a flipped mask cannot match by chance."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(float)
    centre = np.array([14.0, 12.0, 11.0])[:, None, None, None]
    inside = (((grid - centre) / np.array([8.0, 6.0, 5.0])[:, None, None, None]) ** 2).sum(0) < 1
    arr = np.where(inside, 60.0, -80.0) + rng.normal(0, 10, SHAPE)
    return gzip.compress(nib.Nifti1Image(arr.astype(np.float32), _affine(kind)).to_bytes(), compresslevel=1)


def _app(model_dir: Path, tmp: Path, **settings: float) -> TestClient:
    app = create_app(ServeSettings(api_keys=(KEY,), tmp_dir=tmp, routers=("segmentation",), **settings),
                     backend=None, model_dirs={"segmentation": model_dir})
    return TestClient(app)


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with _app(model_dir, tmp_path_factory.mktemp("up")) as c:
        yield c


def _create(client: TestClient, data: bytes | None = None) -> dict:
    r = client.post("/v1/sessions", headers=AUTH, files={"file": ("ct.nii.gz", io.BytesIO(data or _ct()))})
    assert r.status_code == 200, r.text
    return r.json()


def _click(client: TestClient, sid: str, **body) -> dict:
    r = client.post(f"/v1/sessions/{sid}/segment", headers=AUTH, json={"points": [CLICK], **body})
    assert r.status_code == 200, r.text
    return r.json()


def _mask(body: dict) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["mask_nifti_gz_b64"])))


class _EncoderCalls:
    """Counts forward passes of the cached model's image encoder."""

    def __init__(self, model_dir: Path) -> None:
        self.n = 0
        self.handle = get_segmenter(model_dir).encoder.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.n += 1


@pytest.fixture()
def encoder_calls(model_dir: Path):
    calls = _EncoderCalls(model_dir)
    yield calls
    calls.handle.remove()


# ------------------------------------------------------------------------------------ sessions
def test_later_clicks_reuse_the_embedding_and_the_previous_mask(client, encoder_calls) -> None:
    s = _create(client)
    assert s["expires_in_s"] > 0 and s["shape_voxel"] == list(SHAPE) and s["session_bytes"] > 0
    assert encoder_calls.n == 1  # embedded once, at upload
    first = _click(client, s["session_id"])
    assert first["click"] == 1 and first["used_previous_mask"] is False
    for k in range(2, 6):
        body = _click(client, s["session_id"], points=[CLICK, [3, 3, 3]], labels=[1, 0])
        assert body["click"] == k and body["used_previous_mask"] is True
    assert encoder_calls.n == 1, "clicks 2-5 ran the image encoder again"
    for key in ("score", "expected_dice", "low_confidence", "voxels", "volume_ml", "bbox_voxel", "stability"):
        assert key in body
    off = _click(client, s["session_id"], use_previous_mask=False)
    assert off["used_previous_mask"] is False


@pytest.mark.parametrize("kind", ["flipped", "oblique"])
def test_the_mask_comes_back_on_the_upload_grid(client, model_dir, tmp_path, kind) -> None:
    data = _ct(kind)
    (tmp_path / "ct.nii.gz").write_bytes(data)
    sid = _create(client, data)["session_id"]
    body = _click(client, sid)
    img = _mask(body)
    upload = nib.load(tmp_path / "ct.nii.gz")
    assert img.shape == upload.shape
    np.testing.assert_allclose(img.affine, upload.affine, atol=1e-5)
    # voxel for voxel what the in-process predictor writes for the same click
    vol = load_volume(tmp_path / "ct.nii.gz")
    pred = SegPredictor(get_segmenter(model_dir))
    pred.set_volume(vol)
    ref = nib.load(save_like(pred.predict(points=[CLICK], labels=[1]).mask, vol, tmp_path / "ref.nii.gz"))
    got = np.asarray(img.dataobj)
    assert 0 < got.sum() < got.size, "the tiny model's mask should be neither empty nor full here"
    np.testing.assert_array_equal(got, np.asarray(ref.dataobj))
    assert body["voxels"] == int(got.sum())
    # the same click given in world mm (RAS+) lands on the same voxel
    mm = (upload.affine @ np.array([*CLICK, 1.0]))[:3].tolist()
    sid2 = _create(client, data)["session_id"]
    world = _click(client, sid2, points=[mm], coords="world")
    np.testing.assert_array_equal(np.asarray(_mask(world).dataobj), got)


def test_delete_and_unknown_ids_are_404(client) -> None:
    sid = _create(client)["session_id"]
    r = client.delete(f"/v1/sessions/{sid}", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted"] is True
    for r in (client.post(f"/v1/sessions/{sid}/segment", headers=AUTH, json={"points": [CLICK]}),
              client.delete(f"/v1/sessions/{sid}", headers=AUTH),
              client.post("/v1/sessions/not-a-session/segment", headers=AUTH, json={"points": [CLICK]})):
        assert r.status_code == 404, r.text
        assert "no such session" in r.json()["detail"] and "POST /v1/sessions" in r.json()["hint"]


@pytest.mark.parametrize(("body", "words"), [
    ({}, "empty prompt"),
    ({"points": [[1, 2]]}, "three numbers"),
    ({"points": [[500, 2, 3]]}, "outside"),
    ({"points": [CLICK], "labels": [1, 0]}, "label"),
    ({"points": [CLICK], "labels": [2]}, "label"),
    ({"box": [1, 2, 3, 4, 5]}, "6 numbers"),
    ({"point": [CLICK]}, "point"),  # a typo is refused, not ignored
    ({"points": [CLICK], "coords": "ijk"}, "coords"),
    ({"points": "1,2,3"}, "points"),
    ({"points": [CLICK], "return_mask": "dicom-seg"}, "DICOM series"),
])
def test_bad_prompts_are_400_with_a_reason(client, body, words) -> None:
    sid = _create(client)["session_id"]
    r = client.post(f"/v1/sessions/{sid}/segment", headers=AUTH, json=body)
    assert r.status_code == 400, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert _click(client, sid)["click"] == 1  # the session survives a bad prompt


def test_every_session_route_needs_the_api_key(client) -> None:
    sid = _create(client)["session_id"]
    assert client.post("/v1/sessions", files={"file": ("ct.nii.gz", io.BytesIO(_ct()))}).status_code == 401
    assert client.post(f"/v1/sessions/{sid}/segment", json={"points": [CLICK]}).status_code == 401
    assert client.delete(f"/v1/sessions/{sid}", headers={"X-API-Key": "wrong-key-0123456789abc"}).status_code == 401
    assert _click(client, sid)["click"] == 1  # still there
    r = client.post("/v1/sessions", headers=AUTH, files={"file": ("x.txt", io.BytesIO(b"hello" * 200))})
    assert r.status_code == 415


def test_sessions_expire_after_their_idle_ttl(model_dir, tmp_path) -> None:
    with _app(model_dir, tmp_path, session_ttl_s=60.0) as c:
        store = c.app.state.radfm.extras[STORE_KEY]
        now = [1000.0]
        store.clock = lambda: now[0]
        sid = _create(c)["session_id"]
        now[0] += 50
        assert _click(c, sid)["expires_in_s"] == 60.0  # a click restarts the clock
        now[0] += 59
        _click(c, sid)
        now[0] += 61
        r = c.post(f"/v1/sessions/{sid}/segment", headers=AUTH, json={"points": [CLICK]})
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        assert len(store) == 0


def test_lru_eviction_under_the_memory_cap(model_dir, tmp_path) -> None:
    (tmp_path / "a").mkdir()
    with _app(model_dir, tmp_path / "a") as c:  # measure one session before and after a click
        s = _create(c)
        base = s["session_bytes"]
        clicked = _click(c, s["session_id"])["session_bytes"]
    assert clicked > base
    cap = int(clicked + 1.5 * base)  # room for one clicked session and one fresh one, not for three
    (tmp_path / "b").mkdir()
    with _app(model_dir, tmp_path / "b", session_max_bytes=cap) as c:
        store = c.app.state.radfm.extras[STORE_KEY]
        s1 = _create(c)["session_id"]
        s2 = _create(c)["session_id"]
        _click(c, s1)  # s1, the older, is now the most recently used
        s3 = _create(c)["session_id"]  # clicked s1 + s2 + s3 > cap: s2 goes, not s1 (LRU, not FIFO)
        r = c.post(f"/v1/sessions/{s2}/segment", headers=AUTH, json={"points": [CLICK]})
        assert r.status_code == 404 and "evicted" in r.json()["detail"]
        assert len(store) == 2 and store.total_bytes <= cap
        assert _click(c, s1)["click"] == 2
        assert c.delete(f"/v1/sessions/{s3}", headers=AUTH).status_code == 200
    with _app(model_dir, tmp_path / "b", session_max_bytes=base // 2) as c:  # one image alone is too big
        r = c.post("/v1/sessions", headers=AUTH, files={"file": ("ct.nii.gz", io.BytesIO(_ct()))})
        assert r.status_code == 413 and "session memory cap" in r.json()["detail"]


def _dicom_zip(n: int = 8) -> bytes:
    """A zipped CT series made from pydicom's CT_small.dcm (128×128, 5 mm apart)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            ds = src.copy()
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), i + 1
            pos = [float(v) for v in src.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"series/slice{i:03d}.dcm", out.getvalue())
    return buf.getvalue()


def test_dicom_series_session_answers_a_dicom_seg_and_deletes_its_files(model_dir, tmp_path) -> None:
    with _app(model_dir, tmp_path) as c:
        r = c.post("/v1/sessions", headers=AUTH, files={"file": ("ct.zip", io.BytesIO(_dicom_zip()))})
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["dicom_seg_available"] is True and s["format"] == "dicom-series"
        kept = list(tmp_path.glob("radfm-session-*"))
        assert len(kept) == 1 and not list(tmp_path.glob("radfm-upload-*"))  # request folder gone, series kept
        body = None
        for point in ([64, 64, 4], [40, 80, 3], [90, 30, 5]):  # the random model may miss; one hit suffices
            body = c.post(f"/v1/sessions/{s['session_id']}/segment", headers=AUTH,
                          json={"points": [point], "return_mask": "dicom-seg", "use_previous_mask": False}).json()
            if not body["empty"]:
                break
        assert body is not None and not body["empty"], body
        seg = pydicom.dcmread(io.BytesIO(base64.b64decode(body["dicom_seg_b64"])))
        assert seg.Modality == "SEG"
        assert c.delete(f"/v1/sessions/{s['session_id']}", headers=AUTH).status_code == 200
        assert not kept[0].exists()
        r = c.post("/v1/sessions", headers=AUTH, files={"file": ("ct.zip", io.BytesIO(_dicom_zip()))})
        assert r.status_code == 200 and len(list(tmp_path.glob("radfm-session-*"))) == 1
    assert not list(tmp_path.glob("radfm-session-*"))  # server shutdown deletes what sessions kept


# ------------------------------------------------------------------------------------ model cache
def test_segment_route_loads_the_model_once_per_process(tmp_path, monkeypatch) -> None:
    import radfm.tasks.segmentation.loading as predictor_mod

    clear_segmenters()
    loads = []
    real = predictor_mod.load_segmenter
    monkeypatch.setattr(predictor_mod, "load_segmenter", lambda *a, **k: loads.append(a) or real(*a, **k))
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    with _app(model_dir, tmp_path) as c:
        for _ in range(2):
            r = c.post("/v1/segment", headers=AUTH, files={"file": ("ct.nii.gz", io.BytesIO(_ct()))},
                       data={"points": ",".join(map(str, CLICK))})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "tiny" and _mask(r.json()).shape == SHAPE
        _create(c)
    assert len(loads) == 1
    tiny_model(seed=1).save_pretrained(model_dir)  # re-saved in place: loaded afresh, not served stale
    before = get_segmenter(model_dir)
    assert len(loads) == 2 and before is get_segmenter(model_dir)


def test_segment_route_with_mm_voxel_and_mixed_clicks(client) -> None:
    """``/v1/segment`` on the cached model: a click in mm equals the same click in voxels; errors stay 400."""
    upload = nib.Nifti1Image.from_bytes(gzip.decompress(_ct()))
    mm = ",".join(f"{v:.4f}" for v in (upload.affine @ np.array([*CLICK, 1.0]))[:3])

    def post(**data: str):
        return client.post("/v1/segment", headers=AUTH, files={"file": ("ct.nii.gz", io.BytesIO(_ct()))}, data=data)

    voxel, world = post(points=",".join(map(str, CLICK))).json(), post(points_mm=mm).json()
    np.testing.assert_array_equal(np.asarray(_mask(voxel).dataobj), np.asarray(_mask(world).dataobj))
    mixed = post(points="3,3,3,-", points_mm=mm)
    assert mixed.status_code == 200 and mixed.json()["prompts"]["labels"] == [0, 1]
    for data, words in (({"points": "500,2,3"}, "outside"), ({"box": "10,10,10,10,20,20"}, "zero"),
                        ({"points": "3,3,3", "points_mm": "900,0,0"}, "outside")):
        r = post(**data)
        assert r.status_code == 400 and words in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------ store units
class _Fake:
    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, np.uint8)
        self.closed = False

    def reset_volume(self) -> None:
        self.closed = True


def test_store_evicts_least_recently_used_first_and_refuses_what_cannot_fit() -> None:
    store = SessionStore(ttl_s=10, max_bytes=3000)
    a, b = store.add(_Fake(1000), None), store.add(_Fake(1000), None)
    store.get(a.id)  # a is now the most recently used
    c = store.add(_Fake(1500), None)
    with pytest.raises(SessionNotFoundError):
        store.get(b.id)
    assert b.predictor.closed and store.get(a.id) is a and store.get(c.id) is c
    with pytest.raises(ResourceError):
        store.add(_Fake(4000), None)
    assert estimate_nbytes(a.predictor, a.predictor) == 1000  # shared storage counted once
