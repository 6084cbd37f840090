"""``SegPredictor``: set a volume once, then answer many prompts (segment-anything's SamPredictor in 3D).

Coordinates. Users give prompts as voxel indices of the file *as stored* (``coords="voxel"``:
nibabel's array order, 3D Slicer's IJK) or as world RAS+ millimetres (``coords="world"``). Every map
(to canonical and model-grid voxels ``(z, y, x)``, and the logits back) is the prepared input's
``geometry`` (``radfm.preprocess.geometry.PreparedGeometry``); the predictor only chooses windows.

Memory. The whole volume is resampled to the model's spacing once (a 512×512×400 CT at 0.7 mm
becomes ~240×240×190 at 1.5 mm), but the encoder only ever sees one window of
``config.window_size`` voxels: the whole volume when it fits, otherwise a window centred on the
prompts (computed at the first ``predict`` and reused while later prompts stay inside it). A box
larger than the window is segmented by a sliding window over the box, logits blended with
weights that fall towards tile borders. Results are mapped back onto the volume's canonical grid
only inside the window's footprint, so memory stays bounded by the window, not the volume.

Scales. A model whose config lists ``inference_spacings`` answers a *first* prompt (no previous
mask) at the plan's spacing and at each of those, and keeps the mask whose border lies on an image
edge (``scale_choice``); passing that result back as ``mask_input`` refines on the grid it came
from, so later clicks cost one decoder pass on one grid.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from radfm.check import require_valid
from radfm.errors import ConfigError, InputError
from radfm.io.volume import Volume
from radfm.models.encoder_config import MODALITY_IDS
from radfm.preprocess.geometry import PreparedGeometry, Window
from radfm.preprocess.plan import PreparedInput, PreprocessPlan, apply_plan
from radfm.tasks.segmentation.calibration import stability_score
from radfm.tasks.segmentation.loading import load_calibration
from radfm.tasks.segmentation.model import ImageEmbeddings, RadFMPromptSegmenter
from radfm.tasks.segmentation.results import Prompts, SegResult
from radfm.tasks.segmentation.scale_choice import choose_by_contrast
from radfm.tasks.segmentation.window import tile_weight

__all__ = ["SegPredictor"]

log = logging.getLogger(__name__)

_MAX_CACHED_WINDOWS = 4


class SegPredictor:
    """Cache a volume's embedding once, then segment from clicks, boxes and previous masks.

    Usage::

        predictor = SegPredictor(load_segmenter())
        predictor.set_volume(load_volume("ct.nii.gz"))
        r1 = predictor.predict(points=[[120, 88, 40]], labels=[1])          # native voxel (i, j, k)
        r2 = predictor.predict(points=[[120, 88, 40], [130, 90, 41]], labels=[1, 0], mask_input=r1)

    Args:
        model: a :class:`RadFMPromptSegmenter` (in eval mode).
        plan: its preprocessing plan (default ``model.preprocess_plan``).
        dtype: ``"fp32"`` or ``"bf16"`` (CPU autocast for the encoder and decoder; several times
            faster on CPUs with AMX, masks differ by a few boundary voxels).
        calibration: maps the predicted IoU to an expected Dice (default: ``calibration.json`` next
            to the weights if the model was loaded from a folder that has one).
        spacings: extra grid spacings (mm) for first prompts (default
            ``model.config.inference_spacings``; ``()``: the plan's spacing only).
    """

    def __init__(self, model: RadFMPromptSegmenter, plan: PreprocessPlan | None = None, *,
                 dtype: Literal["fp32", "bf16"] = "fp32", calibration: Any = None,
                 spacings: Sequence[float] | None = None) -> None:
        self.model = model.eval()
        self.plan = plan or model.preprocess_plan
        if self.plan is None:
            raise ConfigError("the segmenter has no preprocessing plan.", "Pass plan=PreprocessPlan(...).")
        if tuple(self.plan.pad_multiple) != tuple(model.patch_size):
            # The window is cut from the padded grid, which must be a multiple of the encoder stride;
            # a copy, so the model's own plan is never changed.
            self.plan = replace(self.plan, pad_multiple=tuple(model.patch_size))
        if dtype not in ("fp32", "bf16"):
            raise ConfigError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}.")
        self.dtype = dtype
        self.calibration = calibration if calibration is not None else load_calibration(model)
        self.volume: Volume | None = None
        self._prepared: PreparedInput | None = None
        self._cache: OrderedDict[tuple[int, ...], ImageEmbeddings] = OrderedDict()
        self._window: Window | None = None
        own = tuple(float(v) for v in self.plan.target_spacing)
        extra = model.config.inference_spacings if spacings is None else spacings
        #: One single-grid predictor per extra spacing (same model, its own prepared volume and cache).
        self._scales: dict[tuple[float, float, float], SegPredictor] = {}
        for mm in extra:
            key = (float(mm),) * 3
            if key != own and key not in self._scales:
                self._scales[key] = SegPredictor(model, replace(self.plan, target_spacing=key), dtype=dtype,
                                                 calibration=self.calibration, spacings=())

    @property
    def spacing(self) -> tuple[float, float, float]:
        """This predictor's own model grid (mm), the plan's target spacing."""
        return tuple(float(v) for v in self.plan.target_spacing)  # type: ignore[return-value]

    @property
    def spacings(self) -> list[tuple[float, float, float]]:
        """Every grid a first prompt is answered on (this predictor's first)."""
        return [self.spacing, *self._scales]

    # --- volume ------------------------------------------------------------------------------
    def set_volume(self, volume: Volume) -> None:
        """Check (``require_valid``), preprocess and, when the volume fits one window, embed it now.

        Larger volumes are embedded per window at the first ``predict`` (bounded memory).
        """
        require_valid(volume)
        if volume.n_channels != self.model.config.encoder_config.in_channels:
            raise InputError(f"the image has {volume.n_channels} channel(s); this model takes "
                             f"{self.model.config.encoder_config.in_channels}.")
        self.volume = volume
        self._prepared = apply_plan(volume, self.plan)
        self._cache.clear()
        self._window = None
        full = self._full_window()
        if full is not None:
            self._window = full
            self._embedding(full)
        for other in self._scales.values():
            other.set_volume(volume)

    @property
    def is_volume_set(self) -> bool:
        return self._prepared is not None

    # Public views of the geometry, for baselines and tools that must see exactly what the model saw.
    @property
    def prepared(self) -> PreparedInput:
        """The volume resampled/normalised by the plan (``tensor`` ``(C, D, H, W)``, padded)."""
        if self._prepared is None:
            raise InputError("no volume set.", "Call set_volume(volume) first.")
        return self._prepared

    @property
    def geometry(self) -> PreparedGeometry:
        """Every coordinate map of the set volume (stored, world, canonical, model grid)."""
        return self.prepared.geometry

    def canonical_to_model(self, canonical: np.ndarray) -> np.ndarray:
        """Continuous canonical indices ``(N, 3)`` (x, y, z) → model-grid indices (z, y, x)."""
        return self.geometry.convert(canonical, "canonical", "model")

    def window_for(self, model_points: np.ndarray) -> Window:
        """The model-grid window ``((z0, z1), (y0, y1), (x0, x1))`` ``predict`` would embed for these points."""
        pts = np.asarray(model_points, float).reshape(-1, 3)
        return self._select_window(Prompts(points=pts, labels=np.ones(len(pts), int), box=None))

    def logits_to_canonical(self, logits: torch.Tensor, window: Window) -> np.ndarray:
        """``(d, h, w)`` logits on a window → ``(X, Y, Z)`` uint8 mask on the volume's grid (``> 0``)."""
        return self.geometry.to_canonical(logits, kind="label", window=window)

    def reset_volume(self) -> None:
        """Forget the volume and its cached embeddings."""
        self.volume, self._prepared, self._window = None, None, None
        self._cache.clear()
        for other in self._scales.values():
            other.reset_volume()

    def _padded_shape(self) -> tuple[int, int, int]:
        return self.geometry.padded_shape

    def _full_window(self) -> Window | None:
        shape = self._padded_shape()
        if all(s <= w for s, w in zip(shape, self.model.config.window_size)):
            return tuple((0, s) for s in shape)
        return None

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            yield

    def _embedding(self, window: Window) -> ImageEmbeddings:
        key = tuple(v for pair in window for v in pair)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        assert self._prepared is not None and self.volume is not None
        (z0, z1), (y0, y1), (x0, x1) = window
        x = self._prepared.tensor[None, :, z0:z1, y0:y1, x0:x1]
        modality = torch.tensor([MODALITY_IDS.get(self.volume.modality, MODALITY_IDS["other"])])
        with self._autocast():
            emb = self.model.get_image_embeddings(x, modality if self.model.encoder.modality_embed is not None else None)
        self._cache[key] = emb
        while len(self._cache) > _MAX_CACHED_WINDOWS:
            self._cache.popitem(last=False)
        return emb

    # --- prompts -----------------------------------------------------------------------------
    def _prompts(self, points: Any, labels: Any, box: Any, coords: str, class_name: str | None) -> Prompts:
        pts = lab = bx = None
        if points is not None and np.size(points) > 0:
            pts = self.geometry.convert(self.geometry.checked_points(points, coords), "canonical", "model")
            lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
            if lab.shape[0] != pts.shape[0]:
                raise InputError(f"{pts.shape[0]} point(s) but {lab.shape[0]} label(s).",
                                 "Give one label (1 = foreground, 0 = background) per point.")
            if not np.all(np.isin(lab, (0, 1))):
                raise InputError(f"point labels must be 1 (foreground) or 0 (background), got {lab.tolist()}.")
            lab = lab.astype(np.int64)
        elif labels is not None and np.size(labels) > 0:
            raise InputError("labels were given without points.")
        if box is not None:
            lo, hi = self.geometry.checked_box(box, coords)
            # inclusive canonical voxels → the model voxels covering the same extent
            bx = np.concatenate(self.geometry.convert_box(np.rint(lo), np.rint(hi), "canonical", "model", extent=True))
        cid = self.model.class_id(class_name) if class_name is not None else -1
        if pts is None and bx is None and cid < 0:
            raise InputError("empty prompt: no point, box or structure name was given.",
                             "Give at least one click (--point i,j,k) or a box (--box i0,j0,k0,i1,j1,k1).")
        return Prompts(points=pts, labels=lab, box=bx, class_id=cid)

    # --- windows -----------------------------------------------------------------------------
    def _window_around(self, lo: np.ndarray, hi: np.ndarray) -> Window:
        shape = self._padded_shape()
        out = []
        for a in range(3):
            w = self.model.config.window_size[a]
            if shape[a] <= w:
                out.append((0, shape[a]))
                continue
            centre = 0.5 * (lo[a] + hi[a])
            start = int(np.clip(round(centre - w / 2), 0, shape[a] - w))
            out.append((start, start + w))
        return tuple(out)

    def _select_window(self, prompts: Prompts) -> Window:
        lo, hi = prompts.extent() if (prompts.points is not None or prompts.box is not None) else (
            np.zeros(3), np.asarray(self._padded_shape(), float) - 1)
        full = self._full_window()
        if full is not None:
            return full
        margin = 0.125 * min(self.model.config.window_size)
        if self._window is not None and self._window_contains(self._window, lo, hi, margin):
            return self._window
        return self._window_around(lo, hi)

    def _window_contains(self, window: Window, lo: np.ndarray, hi: np.ndarray,
                         margin: float) -> bool:
        shape = self._padded_shape()
        for a, (s, e) in enumerate(window):
            lo_ok = lo[a] >= s + (margin if s > 0 else 0)
            hi_ok = hi[a] <= e - 1 - (margin if e < shape[a] else 0)
            if not (lo_ok and hi_ok):
                return False
        return True

    # --- predict -----------------------------------------------------------------------------
    def predict(
        self,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask_input: SegResult | torch.Tensor | None = None,
        *,
        coords: Literal["voxel", "world"] = "voxel",
        multimask: bool = True,
        class_name: str | None = None,
    ) -> SegResult:
        """Segment one object.

        Args:
            points: ``(N, 3)`` clicks: native voxel indices ``(i, j, k)`` of the file as stored
                (``coords="voxel"``) or world RAS+ mm ``(x, y, z)`` (``coords="world"``).
            labels: ``(N,)`` 1 = foreground (default), 0 = background.
            box: ``(6,)`` two opposite corners ``(i0, j0, k0, i1, j1, k1)`` (inclusive voxels or mm).
            mask_input: the previous round's :class:`SegResult` (or its ``low_res_logits``).
            multimask: accepted for segment-anything compatibility; the decoder returns one mask
                (an ambiguous click is resolved by the next click, which costs one decoder pass).
            class_name: name of a known structure (``model.config.class_names``) as an extra prompt.
        Returns:
            :class:`SegResult` on the volume's canonical grid.
        Raises:
            InputError: no volume set, empty prompt, NaN, a point outside the image (naming the
                coordinate and the valid range), a zero-size box, wrong label values.
        """
        if self._prepared is None or self.volume is None:
            raise InputError("no volume set.", "Call set_volume(volume) first.")
        kwargs = dict(points=points, labels=labels, box=box, coords=coords, multimask=multimask, class_name=class_name)
        if isinstance(mask_input, SegResult) and mask_input.spacing in self._scales:
            return self._scales[mask_input.spacing].predict(mask_input=mask_input, **kwargs)  # type: ignore[arg-type]
        here = self._predict_here(mask_input=mask_input, **kwargs)  # type: ignore[arg-type]
        if mask_input is not None or not self._scales:
            return here
        results = [here] + [other._predict_here(**kwargs) for other in self._scales.values()]  # type: ignore[arg-type]
        best, scores = choose_by_contrast(self.volume.array, [r.mask for r in results], self.volume.spacing,
                                          modality=self.volume.modality)
        chosen = results[best]
        chosen.scale_scores = {r.spacing[0]: s for r, s in zip(results, scores) if r.spacing is not None}
        log.info("first prompt answered at %s mm (border contrast by spacing: %s)", chosen.spacing,
                 {k: round(v, 3) for k, v in chosen.scale_scores.items()})
        return chosen

    def _predict_here(self, points: Any, labels: Any, box: Any, mask_input: SegResult | torch.Tensor | None = None,
                      *, coords: Literal["voxel", "world"] = "voxel", multimask: bool = True,
                      class_name: str | None = None) -> SegResult:
        """``predict`` on this predictor's own grid only."""
        assert self._prepared is not None and self.volume is not None
        prompts = self._prompts(points, labels, box, coords, class_name)
        if prompts.points is None:
            if prompts.box is None:  # a class name alone: the whole volume, tiled when it exceeds a window
                if self._full_window() is None:
                    return self._predict_sliding_box(prompts)
            else:
                box_size = prompts.box[3:] - prompts.box[:3] + 1
                if any(b > w for b, w, s in zip(box_size, self.model.config.window_size, self._padded_shape())
                       if s > w):
                    return self._predict_sliding_box(prompts)
        window = self._select_window(prompts)
        if window != self._window:
            log.info("embedding window %s (model voxels)", window)
        self._window = window
        emb = self._embedding(window)
        mask_t = self._mask_input(mask_input, window, emb)
        out = self._decode(emb, prompts, window, mask_t, multimask)
        scores = out.iou_predictions[0].float().numpy()
        best = int(np.argmax(scores)) if multimask else 0
        logits = out.masks[0].float()

        def to_canonical(lg: torch.Tensor) -> np.ndarray:
            return self.logits_to_canonical(lg, window)

        return self._result(mask=to_canonical(logits[best]), scores=scores, best=best,
                            low_res=out.low_res_logits[:, best:best + 1].float().clone(), window=window,
                            candidate_logits=logits, to_canonical=to_canonical,
                            stability=self._stability(logits[best]))

    def _mask_input(self, mask_input: SegResult | torch.Tensor | None, window: Window,
                    emb: ImageEmbeddings) -> torch.Tensor | None:
        if mask_input is None:
            return None
        if isinstance(mask_input, SegResult):
            if mask_input.low_res_logits is None or mask_input.window is None:
                return None
            if mask_input.window != window:  # the prompts moved the window: move the mask with it
                return self._shift_mask(mask_input.low_res_logits, mask_input.window, window, emb)
            mask_input = mask_input.low_res_logits
        t = torch.as_tensor(mask_input).float()
        while t.ndim < 5:
            t = t[None]
        want = self.model.mask_input_size(emb.input_size)
        if tuple(t.shape[2:]) != want:
            raise InputError(f"mask_input has shape {tuple(t.shape[2:])}, expected {want}.",
                             "Pass the previous SegResult (or its low_res_logits) of this volume.")
        return t

    def _shift_mask(self, low: torch.Tensor, old: Window, new: Window,
                    emb: ImageEmbeddings) -> torch.Tensor:
        """Previous low-res logits re-cut for a new window: the overlap is copied, the rest is background."""
        want = self.model.mask_input_size(emb.input_size)
        per_voxel = [1.0, 1.0, 1.0]  # mask-input voxels per model voxel
        out = torch.full((1, 1, *want), min(float(low.min()), -1.0))
        src, dst = [], []
        for a in range(3):
            shift = round((old[a][0] - new[a][0]) * per_voxel[a])  # where the old map starts in the new one
            lo, hi = max(shift, 0), min(shift + low.shape[2 + a], want[a])
            if hi <= lo:
                log.info("the previous mask does not overlap the new window; it is not used as a prompt")
                return out
            dst.append(slice(lo, hi))
            src.append(slice(lo - shift, hi - shift))
        out[(..., *dst)] = low[(..., *src)].float()
        log.info("prompts moved the window from %s to %s; the previous mask was moved with it", old, new)
        return out

    def _decode(self, emb: ImageEmbeddings, prompts: Prompts, window: Window,
                mask_t: torch.Tensor | None, multimask: bool) -> Any:
        off = np.array([s for s, _ in window], float)
        kw: dict[str, Any] = {}
        if prompts.points is not None:
            kw["point_coords"] = torch.from_numpy((prompts.points - off)[None]).float()
            kw["point_labels"] = torch.from_numpy(prompts.labels[None])
        if prompts.box is not None:
            size = np.array([e - s for s, e in window], float)
            lo = np.clip(prompts.box[:3] - off, 0, size - 1)
            hi = np.clip(prompts.box[3:] - off, 0, size - 1)
            kw["boxes"] = torch.from_numpy(np.concatenate([lo, hi])[None]).float()
        if prompts.class_id >= 0:
            kw["class_ids"] = torch.tensor([prompts.class_id])
        with self._autocast():
            return self.model.decode(emb, mask_inputs=mask_t, multimask_output=multimask, **kw)

    def _stability(self, logits: torch.Tensor) -> float:
        """Stability score at the calibration's logit offset (1.0, SAM's, without one)."""
        offset = self.calibration.stability_offset if self.calibration is not None else None
        return stability_score(logits, 1.0 if offset is None else offset)

    def _result(self, *, mask: np.ndarray, scores: np.ndarray, best: int, low_res: torch.Tensor | None,
                window: Window | None, candidate_logits: torch.Tensor | None = None,
                to_canonical: Any = None, stability: float | None = None) -> SegResult:
        score = float(np.clip(scores[best], 0.0, 1.0))
        expected, low = None, False
        if self.calibration is not None:
            value = self.calibration.signal_of(score, stability if stability is not None else score)
            expected = float(self.calibration.expected_dice(value))
            low = bool(self.calibration.is_low_confidence(value))
        return SegResult(mask=mask, score=score, candidate_scores=scores, best_index=best, low_res_logits=low_res,
                         expected_dice=expected, low_confidence=low, stability=stability, window=window,
                         spacing=self.spacing, _candidate_logits=candidate_logits, _to_canonical=to_canonical)

    # --- sliding window for big boxes ---------------------------------------------------------
    def _predict_sliding_box(self, prompts: Prompts) -> SegResult:
        """Tile a box (or, for a class name alone, the volume) larger than the window; blend the logits."""
        shape = self._padded_shape()
        wsize = self.model.config.window_size
        if prompts.box is not None:
            lo = np.floor(prompts.box[:3]).astype(int)
            hi = np.ceil(prompts.box[3:]).astype(int) + 1
        else:
            lo, hi = np.zeros(3, int), np.asarray(shape, int)
        region = [(max(int(lo[a]) - 4, 0), min(int(hi[a]) + 4, shape[a])) for a in range(3)]
        starts = []
        for a in range(3):
            r0, r1 = region[a]
            w = min(wsize[a], shape[a])
            if r1 - r0 <= w:
                s = int(np.clip((r0 + r1) // 2 - w // 2, 0, shape[a] - w))
                starts.append([s])
                continue
            n = int(np.ceil((r1 - r0 - w) / (0.75 * w))) + 1
            starts.append(sorted({round(v) for v in np.linspace(r0, r1 - w, n)}))
        span = [(min(s), max(s) + min(wsize[a], shape[a])) for a, s in enumerate(starts)]
        acc = torch.zeros([e - s for s, e in span])
        wsum = torch.zeros_like(acc)
        scores = []
        for sz in starts[0]:
            for sy in starts[1]:
                for sx in starts[2]:
                    window = tuple((s, s + min(wsize[a], shape[a])) for a, s in enumerate((sz, sy, sx)))
                    emb = self._embedding(window)
                    out = self._decode(emb, prompts, window, None, multimask=False)
                    weight = tile_weight([e - s for s, e in window])
                    sl = tuple(slice(s - sp[0], e - sp[0]) for (s, e), sp in zip(window, span))
                    acc[sl] += out.masks[0, 0].float() * weight
                    wsum[sl] += weight
                    scores.append(float(out.iou_predictions[0, 0]))
        logits = acc / wsum.clamp_min(1e-6)
        window = tuple(span)
        mask = self.logits_to_canonical(logits, window)
        self._window = None
        return self._result(mask=mask, scores=np.array([float(np.mean(scores))]), best=0, low_res=None, window=window,
                            stability=self._stability(logits))
