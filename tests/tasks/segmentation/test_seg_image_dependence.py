"""The shipped prompt segmenter reads the image (issue: "a ball around the click, whatever the organ").

Each test would fail for an image-blind model: a ball or a filled box around the prompt scores
below the bars, and the same click on noise gives the same ball. Volumes are SIMULATED (phantom
anatomy with inserted shapes) so the tests run without ../shared/data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radfm.data.phantom import make_phantom
from radfm.io.volume import Volume
from radfm.metrics import dice_score
from radfm.tasks.segmentation.data import shape_mask
from radfm.tasks.segmentation.loading import load_segmenter
from radfm.tasks.segmentation.predictor import SegPredictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor() -> SegPredictor:
    torch.set_num_threads(2)
    return SegPredictor(load_segmenter(), dtype="bf16")


def _phantom_with_shape(kind: str, size: int, seed: int, contrast: float = 250.0) -> tuple[Volume, np.ndarray]:
    """A CT torso phantom (2 mm) with one shape of ``size`` voxels written into its middle (+``contrast`` HU)."""
    case = make_phantom(seed, modality="CT", shape=(96, 96, 64), spacing=(2.0, 2.0, 2.0), n_lesions=0)
    img = case.image.array.astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    m = shape_mask(kind, size, rng)
    full = np.zeros(img.shape, bool)
    c = np.array(img.shape) // 2 + np.array([int(v) for v in rng.integers(-6, 7, 3)])
    lo = c - size // 2
    full[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = m
    img[full] = np.median(img[full]) + contrast + rng.normal(0, 10, int(full.sum()))
    vol = Volume(array=img, affine=case.image.affine.copy(), modality="CT")
    return vol, full


def _interior_voxel(mask: np.ndarray) -> list[int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    return [int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape)]


@pytest.mark.parametrize("kind", ["cube", "torus", "L"])
def test_one_click_gives_the_shape_not_a_ball(predictor: SegPredictor, kind: str) -> None:
    dices, ball = [], []
    for seed in (0, 1):
        vol, gt = _phantom_with_shape(kind, 26, seed)
        predictor.set_volume(vol)
        click = _interior_voxel(gt)
        res = predictor.predict(points=[click], labels=[1])
        dices.append(dice_score(res.mask > 0, gt))
        # the image-blind answer: the best ball around the same click
        grid = np.indices(gt.shape).reshape(3, -1).T
        d2 = ((grid - np.asarray(click)) ** 2).sum(1).reshape(gt.shape)
        ball.append(max(dice_score(d2 <= r * r, gt) for r in range(3, 16)))
    assert np.mean(dices) >= 0.8, f"{kind}: Dice {dices} (best ball {ball})"
    assert np.mean(dices) > np.mean(ball) + 0.1


def test_a_box_around_a_smaller_object_returns_the_object(predictor: SegPredictor) -> None:
    for seed, kind in ((3, "ellipsoid"), (4, "blob")):
        vol, gt = _phantom_with_shape(kind, 22, seed)
        idx = np.argwhere(gt)
        lo, hi = idx.min(0), idx.max(0)
        pad = np.maximum(((hi - lo) * 0.3).astype(int), 3)
        box_lo, box_hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, np.array(gt.shape) - 1)
        predictor.set_volume(vol)
        res = predictor.predict(box=[*box_lo.tolist(), *box_hi.tolist()])
        filled = np.zeros(gt.shape, bool)
        filled[box_lo[0]:box_hi[0] + 1, box_lo[1]:box_hi[1] + 1, box_lo[2]:box_hi[2] + 1] = True
        assert dice_score(res.mask > 0, gt) >= 0.8, kind
        assert dice_score(res.mask > 0, filled) < 0.6  # not the box


def test_same_click_on_intensity_matched_noise_gives_another_mask(predictor: SegPredictor) -> None:
    """The same click on the image and on its voxels shuffled (same histogram, same geometry)."""
    case = make_phantom(7, modality="CT", shape=(96, 96, 64), spacing=(2.0, 2.0, 2.0), n_lesions=0)
    liver = case.labels.array == 5
    click = _interior_voxel(liver)
    predictor.set_volume(case.image)
    on_image = predictor.predict(points=[click], labels=[1]).mask > 0
    rng = np.random.default_rng(0)
    noise = rng.permutation(case.image.array.ravel()).reshape(case.image.shape).astype(np.float32)
    predictor.set_volume(Volume(array=noise, affine=case.image.affine.copy(), modality="CT"))
    on_noise = predictor.predict(points=[click], labels=[1]).mask > 0
    assert dice_score(on_image, liver) >= 0.7
    assert dice_score(on_image, on_noise) <= 0.3
