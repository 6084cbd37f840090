"""``SegPredictor``: set a volume once, then answer many prompts (segment-anything's SamPredictor in 3D).

Coordinates. Users give prompts as voxel indices of the file *as stored* (``coords="voxel"``:
nibabel's array order, 3D Slicer's IJK) or as world RAS+ millimetres (``coords="world"``). They are
converted to canonical indices only through ``radfm.io.coords``; from there to model input voxels
``(z, y, x)`` by the resampling of the preprocessing plan (``F.interpolate(align_corners=False)``:
model = (canonical + 0.5) · scale − 0.5 per axis, axes reversed as ``canonical_to_model`` does).

Memory. The whole volume is resampled to the model's spacing once (a 512×512×400 CT at 0.7 mm
becomes ~240×240×190 at 1.5 mm), but the encoder only ever sees one window of
``config.window_size`` voxels: the whole volume when it fits, otherwise a window centred on the
prompts (computed at the first ``predict`` and reused while later prompts stay inside it). A box
larger than the window is segmented by a sliding window over the box, logits blended with
weights that fall towards tile borders. Results are mapped back onto the volume's canonical grid
only inside the window's footprint, so memory stays bounded by the window, not the volume.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from radfm.adapters.lora import load_encoder_adapter
from radfm.check import require_valid
from radfm.data.patches import model_to_canonical
from radfm.errors import ConfigError, InputError
from radfm.io import check_inside, native_index_to_canonical, world_to_canonical_index
from radfm.io.volume import Volume
from radfm.models.encoder_config import MODALITY_IDS
from radfm.preprocess.plan import PreparedInput, PreprocessPlan, apply_plan
from radfm.tasks.segmentation.calibration import stability_score
from radfm.tasks.segmentation.model import ImageEmbeddings, RadFMPromptSegmenter

__all__ = ["SegPredictor", "SegResult", "default_model_dir", "load_segmenter", "mask_summary", "segment_file"]

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ADAPTER_SUBDIR = "adapter"
CALIBRATION_FILENAME = "calibration.json"
_MAX_CACHED_WINDOWS = 4


def default_model_dir() -> Path:
    """The model shipped inside the package (``radfm/tasks/segmentation/weights``)."""
    return WEIGHTS_DIR


def load_segmenter(model_dir: str | Path | None = None, *, adapter: str | Path | None = None,
                   ) -> RadFMPromptSegmenter:
    """Load a saved segmenter (default: the shipped one), with its LoRA adapter when it has one.

    ``adapter`` overrides the adapter folder (default ``MODEL_DIR/adapter`` if present). Raises
    ConfigError naming the missing file when the folder is not a radfm segmentation model.
    """
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a radfm segmentation model (no config.json).",
                          "Pass --model DIR pointing to a folder written by save_pretrained, or leave it out "
                          "to use the model shipped with radfm.")
    model = RadFMPromptSegmenter.from_pretrained(path)
    adapter_dir = Path(adapter) if adapter is not None else path / ADAPTER_SUBDIR
    if adapter is not None and not adapter_dir.is_dir():
        raise ConfigError(f"adapter folder {adapter_dir} does not exist.", "Pass the folder written by save_adapter.")
    if adapter_dir.is_dir():
        model = load_encoder_adapter(model, adapter_dir)
    if model.preprocess_plan is None:
        raise ConfigError(f"{path} has no preprocess_plan.json.", "Re-save the model with its plan.")
    return model.eval()


@dataclass
class SegResult:
    """One prediction, mapped back onto the volume's canonical grid.

    Attributes:
        mask: ``(X, Y, Z)`` uint8 canonical mask (1 = object) on the volume's grid.
        score: predicted IoU of the chosen candidate (the model's own confidence, 0–1).
        candidate_scores: ``(M,)`` predicted IoU of every candidate.
        best_index: index of the chosen candidate.
        low_res_logits: ``(1, 1, 4gd, 4gh, 4gw)`` logits of the chosen mask, to pass back as
            ``mask_input`` in the next round (``None`` after a sliding-window box).
        stability: stability score of the chosen mask at the calibration's logit offset
            (see ``calibration.stability_score``).
        expected_dice: calibrated expected Dice from ``score`` / ``stability`` (``None`` without calibration).
        low_confidence: ``expected_dice`` below the calibration's threshold.
        window: model-input window ``((z0, z1), (y0, y1), (x0, x1))`` the logits belong to.
    """

    mask: np.ndarray
    score: float
    candidate_scores: np.ndarray
    best_index: int
    low_res_logits: torch.Tensor | None
    expected_dice: float | None = None
    low_confidence: bool = False
    stability: float | None = None
    window: tuple[tuple[int, int], ...] | None = None
    _candidate_logits: torch.Tensor | None = field(default=None, repr=False)
    _to_canonical: Any = field(default=None, repr=False)

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_scores.shape[0])

    def candidate(self, index: int) -> np.ndarray:
        """``(X, Y, Z)`` uint8 canonical mask of candidate ``index`` (computed on demand: memory)."""
        if self._candidate_logits is None:
            if index == self.best_index:
                return self.mask
            raise InputError("this result kept only its chosen mask (sliding-window box).")
        return self._to_canonical(self._candidate_logits[index])

    @property
    def candidates(self) -> list[np.ndarray]:
        """All candidate masks, canonical ``(X, Y, Z)`` uint8 each."""
        return [self.candidate(i) for i in range(self.num_candidates)]


@dataclass
class _Prompts:
    """Prompts converted to continuous model-input voxel coordinates (z, y, x), whole resampled grid."""

    points: np.ndarray | None  # (N, 3)
    labels: np.ndarray | None  # (N,)
    box: np.ndarray | None  # (6,) inclusive (z0, y0, x0, z1, y1, x1)
    class_id: int = -1

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        pts = [p for p in (self.points, None if self.box is None else self.box.reshape(2, 3)) if p is not None]
        allp = np.concatenate(pts, axis=0)
        return allp.min(axis=0), allp.max(axis=0)


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
    """

    def __init__(self, model: RadFMPromptSegmenter, plan: PreprocessPlan | None = None, *,
                 dtype: Literal["fp32", "bf16"] = "fp32", calibration: Any = None) -> None:
        self.model = model.eval()
        self.plan = plan or model.preprocess_plan
        if self.plan is None:
            raise ConfigError("the segmenter has no preprocessing plan.", "Pass plan=PreprocessPlan(...).")
        if tuple(self.plan.pad_multiple) != tuple(model.patch_size):
            # The window is cut from the padded grid, which must be a multiple of the patch.
            self.plan.pad_multiple = tuple(model.patch_size)
        if dtype not in ("fp32", "bf16"):
            raise ConfigError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}.")
        self.dtype = dtype
        self.calibration = calibration if calibration is not None else _load_calibration(model)
        self.volume: Volume | None = None
        self._prepared: PreparedInput | None = None
        self._cache: OrderedDict[tuple[int, ...], ImageEmbeddings] = OrderedDict()
        self._window: tuple[tuple[int, int], ...] | None = None

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

    def canonical_to_model(self, canonical: np.ndarray) -> np.ndarray:
        """Continuous canonical indices ``(N, 3)`` (x, y, z) → model-grid indices (z, y, x)."""
        return self._to_model(np.asarray(canonical, dtype=np.float64))

    def window_for(self, model_points: np.ndarray) -> tuple[tuple[int, int], ...]:
        """The model-grid window ``((z0, z1), (y0, y1), (x0, x1))`` ``predict`` would embed for these points."""
        pts = np.asarray(model_points, float).reshape(-1, 3)
        return self._select_window(_Prompts(points=pts, labels=np.ones(len(pts), int), box=None))

    def logits_to_canonical(self, logits: torch.Tensor, window: tuple[tuple[int, int], ...]) -> np.ndarray:
        """``(d, h, w)`` logits on a window → ``(X, Y, Z)`` uint8 mask on the volume's grid (``> 0``)."""
        return self._logits_to_canonical(logits, window)

    def reset_volume(self) -> None:
        """Forget the volume and its cached embeddings."""
        self.volume, self._prepared, self._window = None, None, None
        self._cache.clear()

    def _padded_shape(self) -> tuple[int, int, int]:
        assert self._prepared is not None
        return tuple(int(s) for s in self._prepared.tensor.shape[1:])  # type: ignore[return-value]

    def _full_window(self) -> tuple[tuple[int, int], ...] | None:
        shape = self._padded_shape()
        if all(s <= w for s, w in zip(shape, self.model.config.window_size)):
            return tuple((0, s) for s in shape)
        return None

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            yield

    def _embedding(self, window: tuple[tuple[int, int], ...]) -> ImageEmbeddings:
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
    def _to_model(self, canonical: np.ndarray) -> np.ndarray:
        """Continuous canonical (x, y, z) → continuous model-input (z, y, x) of the resampled grid."""
        assert self._prepared is not None
        scale = np.asarray(self._prepared.resampled_shape, float) / np.asarray(
            self._prepared.canonical_shape[::-1], float)
        return (canonical[..., ::-1] + 0.5) * scale - 0.5  # axis reversal = canonical_to_model

    def _convert_points(self, values: Any, coords: str, what: str) -> np.ndarray:
        """User points → canonical continuous indices (N, 3), checked inside the volume."""
        assert self.volume is not None
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"{what} must be three numbers per point, got shape {np.shape(values)}.",
                             "Give (i, j, k) voxel indices or (x, y, z) world mm per point.")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} contains NaN or infinite values: {arr.tolist()}.", "Give finite coordinates.")
        if coords == "voxel":
            shape = self.volume.native.shape[:3] if self.volume.native is not None else self.volume.shape
            check_inside(arr, tuple(shape))  # names the native axis and its valid range
            return native_index_to_canonical(arr, self.volume)
        if coords == "world":
            canon = world_to_canonical_index(arr, self.volume)
            try:
                check_inside(canon, self.volume.shape)
            except InputError as exc:
                bad = next(i for i, c in enumerate(canon)
                           if np.any((np.rint(c) < 0) | (np.rint(c) >= np.asarray(self.volume.shape))))
                lo = self.volume.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
                hi = self.volume.affine @ np.array([*(np.asarray(self.volume.shape) - 0.5), 1.0])
                box = ", ".join(f"{min(a, b):.1f}..{max(a, b):.1f}" for a, b in zip(lo[:3], hi[:3]))
                raise InputError(
                    f"{what} ({', '.join(f'{v:g}' for v in arr[bad])}) mm (world RAS+) is outside the image, "
                    f"whose voxels span x, y, z = {box} mm (corner to corner of the grid).",
                    "Check the coordinate system: --point-mm takes RAS+ millimetres as 3D Slicer shows them "
                    "(DICOM viewers show LPS: negate x and y).") from exc
            return canon
        raise InputError(f"coords must be 'voxel' or 'world', got {coords!r}.")

    def _prompts(self, points: Any, labels: Any, box: Any, coords: str, class_name: str | None) -> _Prompts:
        pts = lab = bx = None
        if points is not None and np.size(points) > 0:
            canon = self._convert_points(points, coords, "point")
            pts = self._to_model(canon)
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
            arr = np.asarray(box, dtype=np.float64).reshape(-1)
            if arr.size != 6:
                raise InputError(f"a box needs 6 numbers (two opposite corners i0, j0, k0, i1, j1, k1), got {arr.size}.")
            corners = self._convert_points(arr.reshape(2, 3), coords, "box corner")
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            flat = np.flatnonzero(np.rint(hi) - np.rint(lo) < 1)
            if flat.size:
                ax = int(flat[0])
                raise InputError(f"the box has zero size along canonical axis {ax} ({'RAS'[ax]}): both corners "
                                 f"fall on voxel {int(np.rint(lo[ax]))}.",
                                 "Give two opposite corners of a box around the object (at least 2 voxels wide "
                                 "along every axis).")
            # Inclusive voxel box → model voxels covering the same extent (see module doc).
            assert self._prepared is not None
            scale = np.asarray(self._prepared.resampled_shape, float) / np.asarray(
                self._prepared.canonical_shape[::-1], float)
            mlo = np.rint(lo)[::-1] * scale
            mhi = (np.rint(hi)[::-1] + 1.0) * scale - 1.0
            bx = np.concatenate([mlo, np.maximum(mhi, mlo)])
        cid = self.model.class_id(class_name) if class_name is not None else -1
        if pts is None and bx is None and cid < 0:
            raise InputError("empty prompt: no point, box or structure name was given.",
                             "Give at least one click (--point i,j,k) or a box (--box i0,j0,k0,i1,j1,k1).")
        return _Prompts(points=pts, labels=lab, box=bx, class_id=cid)

    # --- windows -----------------------------------------------------------------------------
    def _window_around(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[int, int], ...]:
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

    def _select_window(self, prompts: _Prompts) -> tuple[tuple[int, int], ...]:
        lo, hi = prompts.extent() if (prompts.points is not None or prompts.box is not None) else (
            np.zeros(3), np.asarray(self._padded_shape(), float) - 1)
        full = self._full_window()
        if full is not None:
            return full
        margin = 0.125 * min(self.model.config.window_size)
        if self._window is not None and self._window_contains(self._window, lo, hi, margin):
            return self._window
        return self._window_around(lo, hi)

    def _window_contains(self, window: tuple[tuple[int, int], ...], lo: np.ndarray, hi: np.ndarray,
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
            multimask: return three candidates and choose the best by predicted IoU (best for one
                ambiguous click); SAM's advice: ``False`` once there are several clicks or a box.
            class_name: name of a known structure (``model.config.class_names``) as an extra prompt.
        Returns:
            :class:`SegResult` on the volume's canonical grid.
        Raises:
            InputError: no volume set, empty prompt, NaN, a point outside the image (naming the
                coordinate and the valid range), a zero-size box, wrong label values.
        """
        if self._prepared is None or self.volume is None:
            raise InputError("no volume set.", "Call set_volume(volume) first.")
        prompts = self._prompts(points, labels, box, coords, class_name)
        if prompts.box is not None and prompts.points is None:
            box_size = prompts.box[3:] - prompts.box[:3] + 1
            if any(b > w for b, w, s in zip(box_size, self.model.config.window_size, self._padded_shape()) if s > w):
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
            return self._logits_to_canonical(lg, window)

        return self._result(mask=to_canonical(logits[best]), scores=scores, best=best,
                            low_res=out.low_res_logits[:, best:best + 1].float().clone(), window=window,
                            candidate_logits=logits, to_canonical=to_canonical,
                            stability=self._stability(logits[best]))

    def _mask_input(self, mask_input: SegResult | torch.Tensor | None, window: tuple[tuple[int, int], ...],
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
        want = self.model.prompt_encoder.mask_input_size(emb.grid_size)
        if tuple(t.shape[2:]) != want:
            raise InputError(f"mask_input has shape {tuple(t.shape[2:])}, expected {want}.",
                             "Pass the previous SegResult (or its low_res_logits) of this volume.")
        return t

    def _shift_mask(self, low: torch.Tensor, old: tuple[tuple[int, int], ...], new: tuple[tuple[int, int], ...],
                    emb: ImageEmbeddings) -> torch.Tensor:
        """Previous low-res logits re-cut for a new window: the overlap is copied, the rest is background."""
        want = self.model.prompt_encoder.mask_input_size(emb.grid_size)
        per_voxel = [4.0 / p for p in self.model.patch_size]  # low-res voxels per model voxel
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

    def _decode(self, emb: ImageEmbeddings, prompts: _Prompts, window: tuple[tuple[int, int], ...],
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
                window: tuple[tuple[int, int], ...] | None, candidate_logits: torch.Tensor | None = None,
                to_canonical: Any = None, stability: float | None = None) -> SegResult:
        score = float(np.clip(scores[best], 0.0, 1.0))
        expected, low = None, False
        if self.calibration is not None:
            value = self.calibration.signal_of(score, stability if stability is not None else score)
            expected = float(self.calibration.expected_dice(value))
            low = bool(self.calibration.is_low_confidence(value))
        return SegResult(mask=mask, score=score, candidate_scores=scores, best_index=best, low_res_logits=low_res,
                         expected_dice=expected, low_confidence=low, stability=stability, window=window,
                         _candidate_logits=candidate_logits, _to_canonical=to_canonical)

    # --- sliding window for big boxes ---------------------------------------------------------
    def _predict_sliding_box(self, prompts: _Prompts) -> SegResult:
        """Tile a box larger than the window; blend the single-mask logits of every tile."""
        assert prompts.box is not None
        shape = self._padded_shape()
        wsize = self.model.config.window_size
        lo = np.floor(prompts.box[:3]).astype(int)
        hi = np.ceil(prompts.box[3:]).astype(int) + 1
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
                    weight = _tile_weight([e - s for s, e in window])
                    sl = tuple(slice(s - sp[0], e - sp[0]) for (s, e), sp in zip(window, span))
                    acc[sl] += out.masks[0, 0].float() * weight
                    wsum[sl] += weight
                    scores.append(float(out.iou_predictions[0, 0]))
        logits = acc / wsum.clamp_min(1e-6)
        window = tuple(span)
        mask = self._logits_to_canonical(logits, window)
        self._window = None
        return self._result(mask=mask, scores=np.array([float(np.mean(scores))]), best=0, low_res=None, window=window,
                            stability=self._stability(logits))

    # --- back to the volume's grid ------------------------------------------------------------
    def _logits_to_canonical(self, logits: torch.Tensor, window: tuple[tuple[int, int], ...]) -> np.ndarray:
        """``(d, h, w)`` logits on a model window → ``(X, Y, Z)`` uint8 canonical mask (zeros outside).

        Only the canonical voxels whose centres fall inside the window are resampled (separable
        linear interpolation, the same as ``restore_to_input``'s trilinear), so memory follows the
        window, not the volume.
        """
        assert self._prepared is not None
        canon_zyx = self._prepared.canonical_shape[::-1]
        res = self._prepared.resampled_shape
        out = np.zeros(self._prepared.canonical_shape, dtype=np.uint8)
        mats, slices = [], []
        for a in range(3):
            s, e = window[a]
            e = min(e, res[a])  # the padding beyond the resampled grid is not image
            scale = res[a] / canon_zyx[a]
            # canonical c maps to model (c + 0.5) * scale - 0.5; keep those inside [s - 0.5, e - 0.5].
            c0 = max(int(np.ceil((s - 0.5 + 0.5) / scale - 0.5)), 0) if s > 0 else 0
            c1 = min(int(np.floor((e - 0.5 + 0.5) / scale - 0.5)) + 1, canon_zyx[a]) if e < res[a] else canon_zyx[a]
            if c1 <= c0:
                return out
            m = (np.arange(c0, c1) + 0.5) * scale - 0.5 - s
            mats.append(torch.from_numpy(_linear_weights(m, e - s)))
            slices.append(slice(c0, c1))
        x = logits[: window[0][1] - window[0][0], : window[1][1] - window[1][0], : window[2][1] - window[2][0]]
        x = x[: mats[0].shape[1], : mats[1].shape[1], : mats[2].shape[1]].float()
        x = torch.einsum("zd,dhw->zhw", mats[0], x)
        x = torch.einsum("yh,zhw->zyw", mats[1], x)
        x = torch.einsum("xw,zyw->zyx", mats[2], x)
        sub = model_to_canonical((x > 0).to(torch.uint8).numpy())
        out[slices[2], slices[1], slices[0]] = sub
        return out


def _linear_weights(positions: np.ndarray, n: int) -> np.ndarray:
    """``(len(positions), n)`` linear-interpolation weights at continuous positions (clamped at the ends)."""
    p = np.clip(positions, 0.0, n - 1.0)
    i0 = np.floor(p).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (p - i0).astype(np.float32)
    w = np.zeros((len(p), n), dtype=np.float32)
    rows = np.arange(len(p))
    np.add.at(w, (rows, i0), 1.0 - f)
    np.add.at(w, (rows, i1), f)
    return w


def _tile_weight(size: Sequence[int]) -> torch.Tensor:
    """Separable weights falling linearly to 1/8 at tile borders, so seams blend."""
    axes = []
    for n in size:
        t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        axes.append(0.125 + 0.875 * (1.0 - (2.0 * t - 1.0).abs()))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def _load_calibration(model: RadFMPromptSegmenter) -> Any:
    path = getattr(model, "name_or_path", "") or ""
    if not path:
        return None
    file = Path(path) / CALIBRATION_FILENAME
    if not file.is_file():
        return None
    from radfm.tasks.segmentation.calibration import Calibration

    return Calibration.load(file)


# ----------------------------------------------------------------------------- one call from a file
def mask_summary(mask: np.ndarray, volume: Volume) -> dict[str, Any]:
    """Volume (ml) and bounding box of a canonical mask, in native voxel indices and world RAS+ mm."""
    from radfm.io import canonical_index_to_native, canonical_index_to_world

    n = int(np.count_nonzero(mask))
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    out: dict[str, Any] = {"voxels": n, "volume_ml": round(n * voxel_ml, 4)}
    if n == 0:
        out.update({"bbox_voxel": None, "bbox_mm": None})
        return out
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    native = canonical_index_to_native(corners, volume)
    world = canonical_index_to_world(corners, volume)
    out["bbox_voxel"] = {"min": np.rint(native.min(0)).astype(int).tolist(), "max": np.rint(native.max(0)).astype(int).tolist(),
                         "space": "native voxel indices (i, j, k) of the file as stored"}
    out["bbox_mm"] = {"min": np.round(world.min(0), 2).tolist(), "max": np.round(world.max(0), 2).tolist(),
                      "space": "world RAS+ mm of voxel centres"}
    return out


def segment_file(image: str | Path, *, out: str | Path, points: Sequence[Sequence[float]] = (),
                 labels: Sequence[int] = (), points_mm: Sequence[Sequence[float]] = (), labels_mm: Sequence[int] = (),
                 box: Sequence[float] | None = None, model_dir: str | Path | None = None,
                 adapter: str | Path | None = None, dicom_seg: str | Path | None = None,
                 modality: str | None = None, series: int | None = None, structure: str | None = None,
                 dtype: Literal["fp32", "bf16"] = "fp32") -> dict[str, Any]:
    """Segment one object in an image file from clicks/box and write the mask in the input's own space.

    ``points`` / ``box`` are native voxel indices of the file as stored; ``points_mm`` world RAS+ mm.
    Both kinds of clicks may be mixed; each is converted through ``radfm.io.coords``. Returns the
    summary that ``radfm segment --json`` prints (no patient data).
    """
    import time

    from radfm.io import load_volume, save_like

    t0 = time.perf_counter()
    volume = load_volume(image, modality=modality, series=series)
    if series is not None:
        volume.meta["series_index"] = series
    model = load_segmenter(model_dir, adapter=adapter)
    predictor = SegPredictor(model, dtype=dtype)
    predictor.set_volume(volume)
    canon: list[np.ndarray] = []
    if len(points):
        canon.append(predictor._convert_points(points, "voxel", "point"))
    if len(points_mm):
        canon.append(predictor._convert_points(points_mm, "world", "point"))
    all_labels = [*labels, *labels_mm]
    native_pts = None
    if canon:
        from radfm.io import canonical_index_to_native

        native_pts = canonical_index_to_native(np.concatenate(canon), volume)
    n_clicks = 0 if native_pts is None else len(native_pts)
    result = predictor.predict(points=native_pts, labels=all_labels or None, box=box, coords="voxel",
                               multimask=n_clicks <= 1 and box is None, class_name=structure)
    written = save_like(result.mask, volume, out, dtype=np.uint8)
    summary: dict[str, Any] = {
        "mask": str(written), "score": round(result.score, 4),
        "expected_dice": None if result.expected_dice is None else round(result.expected_dice, 4),
        "stability": None if result.stability is None else round(result.stability, 4),
        "low_confidence": result.low_confidence, **mask_summary(result.mask, volume),
        "prompts": {"points_voxel": [list(map(float, p)) for p in points], "points_mm": [list(map(float, p)) for p in points_mm],
                    "labels": [int(v) for v in all_labels], "box_voxel": None if box is None else [float(v) for v in box],
                    "structure": structure},
        "model": str(model_dir or default_model_dir()), "dtype": dtype, "seconds": round(time.perf_counter() - t0, 3),
    }
    if dicom_seg is not None:
        from radfm.tasks.segmentation.dicom_seg import write_dicom_seg

        summary["dicom_seg"] = str(write_dicom_seg(result.mask, volume, dicom_seg,
                                                   segment_labels=[structure or "segmented object"]))
    return summary
