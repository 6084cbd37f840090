"""Case lists as Hugging Face ``datasets``: public folder layouts, manifests and phantoms.

Why a table of paths first and pixels later: a dataset of a few thousand CTs does not fit in
memory, while its index does; ``datasets`` gives shuffling, sharding, ``map`` and caching for
free. ``load_cases`` therefore returns only paths (and report text), and ``load_case(row)``
reads the volumes when a row is used, through ``radfm.io.load_volume`` so orientation and
spacing are handled in one place. ``phantom_dataset`` is the exception: SIMULATED cases are
small and generated, so their arrays are stored in the table (``Array3D``).

Supported folder layouts (``load_cases`` tells which one it found in ``ds.info.description``):
  1. Medical Segmentation Decathlon: ``dataset.json`` with ``"training": [{"image", "label"}]``
     (and ``"test": [paths]``), files under ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.
  2. nnU-Net v2 raw: ``dataset.json`` with ``"channel_names"``, ``"labels"``, ``"file_ending"``;
     ``imagesTr/CASE_0000<ending>`` (one file per channel), ``labelsTr/CASE<ending>``.
  3. Manifest: a ``.csv``, ``.json`` (list of objects, or ``{"cases": [...]}``) or ``.jsonl``
     file, or a folder holding one ``manifest.{csv,json,jsonl}``; columns ``image`` (several
     channels separated by ";" in CSV, or a JSON list), optional ``label``, ``report``,
     ``case_id``. Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radfm.errors import InputError

SUPPORTED_LAYOUTS = (
    "Medical Segmentation Decathlon folder (dataset.json with 'training', imagesTr/, labelsTr/)",
    "nnU-Net v2 raw folder (dataset.json with 'channel_names', 'labels', 'file_ending'; "
    "imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz)",
    "manifest file (.csv/.json/.jsonl, or a folder with manifest.csv/json/jsonl) with an 'image' "
    "column and optional 'label', 'report', 'case_id'",
)
_MANIFEST_NAMES = ("manifest.csv", "manifest.json", "manifest.jsonl")
_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".npz", ".dcm")


def _features() -> Any:
    from datasets import Features, List, Value

    return Features({"case_id": Value("string"), "image": List(Value("string")),
                     "label": Value("string"), "report": Value("string")})


def _strip_ext(name: str) -> str:
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _missing_error(missing: list[str], where: str) -> InputError:
    shown = ", ".join(missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
    return InputError(f"{len(missing)} file(s) listed in {where} do not exist: {shown}.",
                      "Check the paths (relative paths are resolved from the folder of the dataset/manifest).")


def _to_dataset(rows: list[dict[str, Any]], description: dict[str, Any]) -> Any:
    from datasets import Dataset, DatasetInfo

    if not rows:
        raise InputError(f"no cases found in {description.get('root', '?')}.",
                         "Check that the folder or manifest lists at least one case.")
    ids = [r["case_id"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(f"duplicate case ids: {dupes[:10]}.", "Give every case a unique case_id.")
    columns = {k: [r.get(k) for r in rows] for k in ("case_id", "image", "label", "report")}
    features = _features()
    info = DatasetInfo(description=json.dumps(description), features=features)
    return Dataset.from_dict(columns, features=features, info=info)


# --- layouts -----------------------------------------------------------------------------

def _load_msd(root: Path, meta: dict[str, Any], split: str) -> list[dict[str, Any]]:
    key = "training" if split == "train" else "test"
    entries = meta.get(key, [])
    rows, missing = [], []
    for e in entries:
        image = e["image"] if isinstance(e, Mapping) else e
        label = e.get("label") if isinstance(e, Mapping) else None
        image_p = (root / image).resolve()
        label_p = (root / label).resolve() if label else None
        missing += [str(s) for s, q in ((image, image_p), (label, label_p)) if q is not None and not q.is_file()]
        rows.append({"case_id": _strip_ext(image_p.name), "image": [str(image_p)],
                     "label": str(label_p) if label_p else None, "report": None})
    if missing:
        raise _missing_error(missing, f"{root / 'dataset.json'} ({key})")
    return rows


def _load_nnunet(root: Path, meta: dict[str, Any], split: str) -> list[dict[str, Any]]:
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise InputError(f"{root / 'dataset.json'} has no {key!r}, which nnU-Net v2 requires.",
                             "Add it (e.g. \"file_ending\": \".nii.gz\").")
    ending = str(meta["file_ending"])
    channels = sorted(int(c) for c in meta["channel_names"])
    if "dataset" in meta and split == "train":  # nnU-Net v2's explicit file list
        rows, missing = [], []
        for case, e in sorted(meta["dataset"].items()):
            images = [(root / p).resolve() for p in e["images"]]
            label = (root / e["label"]).resolve() if e.get("label") else None
            missing += [str(p) for p in [*images, label] if p is not None and not p.is_file()]
            rows.append({"case_id": case, "image": [str(p) for p in images],
                         "label": str(label) if label else None, "report": None})
        if missing:
            raise _missing_error(missing, f"{root / 'dataset.json'} (dataset)")
        return rows
    img_dir = root / ("imagesTr" if split == "train" else "imagesTs")
    if not img_dir.is_dir():
        raise InputError(f"nnU-Net folder {root} has no {img_dir.name}/.", "Put the images in imagesTr/.")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for f in sorted(img_dir.iterdir()):
        if f.name.startswith("."):
            continue
        m = pattern.match(f.name)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = f.resolve()
    incomplete = [f"{c} (missing channel(s) {sorted(set(channels) - set(ch))})"
                  for c, ch in cases.items() if set(ch) != set(channels)]
    if incomplete:
        raise InputError(f"nnU-Net cases without all {len(channels)} channel file(s): {', '.join(incomplete[:10])}.",
                         f"Each case needs CASE_0000{ending} ... CASE_{channels[-1]:04d}{ending} in {img_dir.name}/.")
    rows, missing = [], []
    for case, ch in sorted(cases.items()):
        label = None
        if split == "train":
            lp = (root / "labelsTr" / f"{case}{ending}").resolve()
            if not lp.is_file():
                missing.append(f"labelsTr/{case}{ending}")
            label = str(lp)
        rows.append({"case_id": case, "image": [str(ch[c]) for c in channels], "label": label, "report": None})
    if missing:
        raise _missing_error(missing, f"nnU-Net folder {root}")
    return rows


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                return [{(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items()}
                        for r in csv.DictReader(fh)]
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}.") from exc
    if isinstance(data, Mapping) and "cases" in data:
        data = data["cases"]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise InputError(f"manifest {path} is not a list of case objects.",
                         'Use [{"image": ..., "label": ...}, ...] or {"cases": [...]}.')
    return [dict(r) for r in data]


def _load_manifest(path: Path) -> list[dict[str, Any]]:
    records = _read_manifest(path)
    base = path.parent
    if records and "image" not in records[0]:
        raise InputError(f"manifest {path} has no 'image' column (columns: {sorted(records[0])}).",
                         "Name the image path column 'image'.")
    rows, missing = [], []
    seen: dict[str, int] = {}
    for n, r in enumerate(records):
        raw = r.get("image")
        parts = raw if isinstance(raw, list) else [p.strip() for p in str(raw or "").split(";") if p.strip()]
        if not parts:
            raise InputError(f"manifest {path}, row {n + 1}: empty 'image'.")
        images = [(base / p).resolve() for p in parts]
        label = r.get("label") or None
        label_p = (base / label).resolve() if label else None
        missing += [p for p, q in zip([*parts, label], [*images, label_p]) if q is not None and not q.is_file()]
        report = r.get("report") or None
        if isinstance(report, str) and report.lower().endswith((".txt", ".md")) and (base / report).is_file():
            report = (base / report).read_text(encoding="utf-8").strip()
        case_id = r.get("case_id") or None
        if case_id is None:  # derived ids: make repeats unique instead of failing
            case_id = _strip_ext(images[0].name)
            seen[case_id] = seen.get(case_id, 0) + 1
            if seen[case_id] > 1:
                case_id = f"{case_id}_{seen[case_id]}"
        rows.append({"case_id": str(case_id), "image": [str(p) for p in images],
                     "label": str(label_p) if label_p else None, "report": report})
    if missing:
        raise _missing_error([str(m) for m in missing], f"manifest {path}")
    return rows


def load_cases(path: str | Path, *, split: Literal["train", "test"] = "train") -> Any:
    """Index a folder or manifest of cases as a ``datasets.Dataset`` (paths only, no pixels).

    Columns: ``case_id`` (str), ``image`` (list of absolute paths, one per channel file),
    ``label`` (path or None), ``report`` (text or None). ``ds.info.description`` is JSON with
    the layout name and its metadata (label names, channel names) where the layout has them.
    ``split="test"`` reads the unlabelled test list (imagesTs) of MSD/nnU-Net folders.

    Raises:
        InputError: unrecognised layout (the message lists the supported ones), files listed
            but missing (named), incomplete multi-channel nnU-Net cases.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist.", "Give a dataset folder or a manifest file.")
    if p.is_file():
        if p.suffix.lower() not in (".csv", ".json", ".jsonl"):
            raise InputError(f"{p} is not a manifest (.csv, .json, .jsonl).",
                             "Supported: " + "; ".join(SUPPORTED_LAYOUTS) + ".")
        return _to_dataset(_load_manifest(p), {"layout": "manifest", "root": str(p.resolve())})
    ds_json = p / "dataset.json"
    if ds_json.is_file():
        try:
            meta = json.loads(ds_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {ds_json}: {exc}.") from exc
        if "channel_names" in meta or "file_ending" in meta:
            rows = _load_nnunet(p, meta, split)
            desc = {"layout": "nnunet", "root": str(p.resolve()), "channel_names": meta.get("channel_names"),
                    "labels": meta.get("labels"), "file_ending": meta.get("file_ending")}
            return _to_dataset(rows, desc)
        if "training" in meta:
            rows = _load_msd(p, meta, split)
            desc = {"layout": "msd", "root": str(p.resolve()), "modality": meta.get("modality"),
                    "labels": meta.get("labels"), "name": meta.get("name")}
            return _to_dataset(rows, desc)
    for name in _MANIFEST_NAMES:
        if (p / name).is_file():
            return _to_dataset(_load_manifest(p / name), {"layout": "manifest", "root": str((p / name).resolve())})
    raise InputError(f"{p} has no recognised dataset layout.", "Supported: " + "; ".join(SUPPORTED_LAYOUTS) + ".")


# --- loading one case --------------------------------------------------------------------

def _volume_loader() -> Callable[..., Any]:
    """``radfm.io.load_volume``, imported on first use (radfm.io pulls in the I/O stack)."""
    from radfm.io import load_volume

    return load_volume


def _same_grid(a: Any, b: Any, tol_mm: float = 1e-3) -> bool:
    """Same voxel grid: equal spatial shape and affines equal to ``tol_mm`` (header float noise)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tol_mm, rtol=0))


def load_case(row: Mapping[str, Any], *, modality: str | None = None) -> dict[str, Any]:
    """Read one row of ``load_cases`` into volumes.

    Returns ``{"case_id", "image": Volume, "label": Volume | None, "report": str | None}``;
    several channel files are stacked into one ``(X, Y, Z, C)`` Volume. Label maps come back as
    integers. Raises ``InputError`` when channels or the label are not on the image's grid
    (shape and affine), naming the case and both grids.
    """
    load = _volume_loader()
    case = row.get("case_id", "?")
    vols = [load(p, modality=modality) for p in row["image"]]
    image = vols[0]
    for p, v in zip(row["image"][1:], vols[1:]):
        if not _same_grid(image, v):
            raise InputError(f"case {case}: channel {Path(p).name} has grid {v.shape} / spacing {v.spacing}, "
                             f"the first channel {image.shape} / spacing {image.spacing}.",
                             "Resample all channels onto one grid.")
    if len(vols) > 1:
        arrays = [v.array if v.array.ndim == 4 else v.array[..., None] for v in vols]
        image = image.with_array(np.concatenate(arrays, axis=-1))
    label = None
    if row.get("label"):
        label = load(row["label"])
        if not _same_grid(image, label):
            raise InputError(
                f"case {case}: label grid {label.shape} (spacing {tuple(round(s, 4) for s in label.spacing)}) "
                f"does not match image grid {image.shape} (spacing {tuple(round(s, 4) for s in image.spacing)}).",
                "Resample the label onto the image grid (nearest neighbour) or fix the file pairing.")
        arr = label.array
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.rint(arr).astype(np.int16)
        label = label.with_array(arr) if arr is not label.array else label
    return {"case_id": case, "image": image, "label": label, "report": row.get("report")}


# --- simulated datasets ------------------------------------------------------------------

def phantom_dataset(
    n: int,
    *,
    seed: int = 0,
    modality: Literal["CT", "MR"] = "CT",
    shape: Sequence[int] = (64, 64, 64),
    with_reports: bool = True,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    body: Literal["chest_abdomen", "head"] = "chest_abdomen",
) -> Any:
    """``n`` SIMULATED cases from ``make_phantom`` as an in-memory ``datasets.Dataset``.

    Columns: ``case_id``, ``seed`` (the case's phantom seed), ``image`` (Array3D float32,
    canonical ``(X, Y, Z)``, HU for CT), ``labels`` (Array3D uint8), ``affine`` (4×4 voxel -> RAS+
    mm), ``modality``, ``label_names`` and ``findings`` (JSON strings), and with ``with_reports``
    ``report`` (full text) and ``report_json`` (``Report.to_dict`` as JSON, with sentence ->
    finding links). ``labels`` is stored as uint8, but ``with_format("numpy"/"torch")`` hands it
    back as int64 (a ``datasets`` formatter choice). Case seeds come from ``np.random.SeedSequence(seed)``, so the dataset is
    deterministic and ``phantom_dataset(k)`` is a prefix of ``phantom_dataset(n)`` for k < n.
    """
    from datasets import Array3D, Dataset, Features, List, Value, concatenate_datasets

    from radfm.data.phantom import make_phantom

    shape = tuple(int(s) for s in shape)
    if n < 1:
        raise InputError(f"phantom_dataset needs n >= 1, got {n}.")
    cols: dict[str, Any] = {
        "case_id": Value("string"), "seed": Value("int64"),
        "image": Array3D(shape, "float32"), "labels": Array3D(shape, "uint8"),
        "affine": List(List(Value("float64"))), "modality": Value("string"),
        "label_names": Value("string"), "findings": Value("string"),
    }
    if with_reports:
        cols.update({"report": Value("string"), "report_json": Value("string")})
    features = Features(cols)
    seeds = np.random.SeedSequence(seed).generate_state(n).tolist()
    parts = []
    chunk: dict[str, list[Any]] = {k: [] for k in cols}
    for i, s in enumerate(seeds):
        case = make_phantom(int(s), modality=modality, shape=shape, spacing=tuple(spacing), body=body)
        chunk["case_id"].append(f"phantom_{seed}_{i:05d}")
        chunk["seed"].append(int(s))
        chunk["image"].append(case.image.array)
        chunk["labels"].append(case.labels.array)
        chunk["affine"].append(case.image.affine.tolist())
        chunk["modality"].append(case.image.modality)
        chunk["label_names"].append(json.dumps({str(k): v for k, v in case.label_names.items()}))
        chunk["findings"].append(json.dumps([f.to_dict() for f in case.findings]))
        if with_reports:
            chunk["report"].append(case.report.text)
            chunk["report_json"].append(json.dumps(case.report.to_dict()))
        if len(chunk["case_id"]) == 32 or i == n - 1:  # bounded peak memory of python lists
            parts.append(Dataset.from_dict(chunk, features=features))
            chunk = {k: [] for k in cols}
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
