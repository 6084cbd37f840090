"""``radfm demo`` section: click on a lesion (or organ) of the demo phantom, then refine with a second click.

Shows what a user sees: the mask overlay with the click marker, the model's score (predicted IoU and
calibrated expected Dice), the Dice against the phantom's exact label, and how a corrective click
(placed where the first mask is most wrong, as in the training simulation) changes it.
"""

from __future__ import annotations

import html
import time

import numpy as np

from radfm.demo import DemoContext, DemoSection
from radfm.io import canonical_index_to_native
from radfm.viz import save_overlay

__all__ = ["section"]


def _target(ctx: DemoContext) -> tuple[int, str]:
    """A lesion of the case if it has one (the interesting click), else the liver."""
    labels = ctx.case.labels.array
    for f in ctx.case.findings:
        lid = getattr(f, "label_id", None)
        if lid is not None and int(lid) > 0 and np.count_nonzero(labels == int(lid)) >= 30:
            return int(lid), f"{f.finding} in the {f.organ}"
    names = {v: k for k, v in ctx.case.label_names.items()}
    return int(names.get("liver", 5)), "liver"


def section(ctx: DemoContext) -> DemoSection:
    """Segment one structure of the demo case from one click, then two (see module doc)."""
    from radfm.tasks.segmentation.interaction import dice_score, next_click
    from radfm.tasks.segmentation.loading import load_segmenter
    from radfm.tasks.segmentation.predictor import SegPredictor

    label_id, name = _target(ctx)
    gt = ctx.case.labels.array == label_id
    t0 = time.perf_counter()
    predictor = SegPredictor(load_segmenter())
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    predictor.set_volume(ctx.image)
    t_embed = time.perf_counter() - t
    spacing = ctx.image.spacing
    rows, images = [], []
    points: list[np.ndarray] = []
    labels: list[int] = []
    pred = np.zeros(gt.shape, dtype=bool)
    result = None
    for round_ in (1, 2):
        click = next_click(pred, gt, spacing=spacing)
        if click is None:
            break
        points.append(click[0])
        labels.append(click[1])
        native = canonical_index_to_native(np.array(points, float), ctx.image)
        t = time.perf_counter()
        result = predictor.predict(points=native, labels=labels, mask_input=result, multimask=round_ == 1)
        t_click = time.perf_counter() - t
        pred = result.mask.astype(bool)
        d = dice_score(pred, gt)
        png = save_overlay(
            ctx.out_dir / f"segmentation_click{round_}.png", ctx.image.array, mask=result.mask, modality="CT",
            center=[int(v) for v in points[-1]], points=[(p, bool(lab)) for p, lab in zip(points, labels)],
            spacing=spacing, title=f"{name}: {round_} click(s), Dice {d:.2f} vs the phantom label")
        images.append(png.name)
        exp = "" if result.expected_dice is None else f"{result.expected_dice:.2f}"
        rows.append(
            f"<tr><td>{round_}</td><td>{'+' if click[1] else '−'} at native voxel "
            f"{tuple(round(v) for v in native[-1])}</td><td>{result.score:.2f}</td><td>{exp}</td>"
            f"<td>{'yes' if result.low_confidence else 'no'}</td><td><b>{d:.3f}</b></td>"
            f"<td>{1000 * t_click:.0f} ms</td></tr>")
    body = f"""
<p>Prompt segmentation of the <b>{html.escape(name)}</b> (label {label_id}) with the model shipped in
<code>radfm/tasks/segmentation/weights</code> (trained on SIMULATED phantoms only; see its MODEL_CARD.md).
Click 1 is the most interior point of the structure; click 2 is placed where mask 1 is most wrong
(green star: foreground click, red: background). The same as
<code>radfm segment {html.escape(ctx.image_path.name)} --point i,j,k --out mask.nii.gz</code>.</p>
<table><tr><th>click</th><th>prompt</th><th>predicted IoU</th><th>expected Dice (calibrated)</th>
<th>low confidence</th><th>Dice vs label</th><th>time</th></tr>{''.join(rows)}</table>
<p>Model load {t_load:.1f} s, embedding {t_embed:.2f} s (once per volume), then per click as shown.</p>
{''.join(f'<img src="{html.escape(i)}" alt="segmentation overlay">' for i in images)}"""
    return DemoSection(title="Prompt segmentation (clicks → 3D mask)", html=body, ok=bool(rows), images=images)
