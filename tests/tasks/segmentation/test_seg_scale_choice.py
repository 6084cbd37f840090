"""Scale choice: a first prompt answered on several grids keeps the mask whose border is an image edge,
and later rounds refine on the grid that answered."""

from __future__ import annotations

import numpy as np
import pytest
from segtest_utils import blob_volume, tiny_model

from radfm.errors import ConfigError
from radfm.tasks.segmentation.model import RadFMSegConfig
from radfm.tasks.segmentation.predictor import SegPredictor
from radfm.tasks.segmentation.scale_choice import PRIMARY_PREFERENCE, boundary_contrast, choose_by_contrast


def _cube_image(shape: tuple[int, int, int] = (40, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 0.05, shape).astype(np.float32)
    cube = np.zeros(shape, bool)
    cube[12:28, 10:30, 14:26] = True
    img[cube] += 1.0
    return img, cube


def test_the_object_border_scores_above_a_mask_inside_it_or_around_it() -> None:
    img, cube = _cube_image()
    sp = (2.0, 2.0, 2.0)
    inside = np.zeros_like(cube)
    inside[16:24, 16:24, 17:23] = True  # a blob inside the object: both bands in the object
    around = np.zeros_like(cube)
    around[4:36, 2:38, 6:34] = True  # leakage: both bands outside
    exact = boundary_contrast(img, cube, sp)
    assert exact > 10 * max(boundary_contrast(img, inside, sp), boundary_contrast(img, around, sp))
    assert boundary_contrast(img, np.zeros_like(cube), sp) == float("-inf")
    # the band is in mm: on a 0.5 mm grid a 2-voxel-thick shell still has both bands
    assert np.isfinite(boundary_contrast(img, cube, (0.5, 0.5, 0.5)))


def test_the_plan_grid_wins_unless_another_grid_has_clearly_more_contrast() -> None:
    img, cube = _cube_image()
    sp = (2.0, 2.0, 2.0)
    inside = np.zeros_like(cube)
    inside[16:24, 16:24, 17:23] = True
    assert choose_by_contrast(img, [inside, cube], sp)[0] == 1  # the edge wins over the plan grid's blob
    assert choose_by_contrast(img, [cube, inside], sp)[0] == 0
    # a candidate a little better than the plan grid's is not enough
    scores = choose_by_contrast(img, [cube, cube], sp)[1]
    assert scores[0] == pytest.approx(scores[1]) and PRIMARY_PREFERENCE > 1
    assert choose_by_contrast(img, [cube, cube], sp)[0] == 0
    assert choose_by_contrast(img, [np.zeros_like(cube), np.zeros_like(cube)], sp)[0] == 0


def test_first_prompt_is_answered_on_every_spacing_and_refined_on_the_chosen_one() -> None:
    model = tiny_model()
    model.config.inference_spacings = [3.0, 4.0]
    predictor = SegPredictor(model)
    assert predictor.spacings == [(2.0,) * 3, (3.0,) * 3, (4.0,) * 3]
    volume = blob_volume((40, 38, 36))
    predictor.set_volume(volume)
    first = predictor.predict(points=[[20, 19, 18]], labels=[1])
    assert first.mask.shape == volume.shape
    assert first.scale_scores is not None and set(first.scale_scores) == {2.0, 3.0, 4.0}
    assert first.spacing in predictor.spacings
    chosen = first.spacing
    # a later round with the previous result runs on that grid only (its low-res logits belong to it)
    def must_not_run(*_a: object, **_k: object) -> None:
        raise AssertionError("a grid other than the chosen one was asked")

    for grid in [predictor, *predictor._scales.values()]:
        if grid.spacing != chosen:
            grid._predict_here = must_not_run  # type: ignore[method-assign]
    second = predictor.predict(points=[[20, 19, 18], [3, 3, 3]], labels=[1, 0], mask_input=first)
    assert second.spacing == chosen and second.scale_scores is None
    assert second.mask.shape == volume.shape


def test_without_inference_spacings_only_the_plan_grid_runs() -> None:
    predictor = SegPredictor(tiny_model(), spacings=())
    predictor.set_volume(blob_volume())
    r = predictor.predict(points=[[15, 14, 13]], labels=[1])
    assert predictor.spacings == [(2.0,) * 3] and r.spacing == (2.0,) * 3 and r.scale_scores is None


def test_inference_spacings_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="inference_spacings"):
        RadFMSegConfig(inference_spacings=[3.0, -1.0])
