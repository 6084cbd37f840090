"""``radfm bench io``: how much ``radfm.io.load_volume`` costs over the plain library read it wraps.

Why: every task starts by loading a study, and radfm adds work on top of nibabel / SimpleITK
(canonical RAS+ orientation, HU rescale, geometry and modality checks). This benchmark times
both on the same real files, in one process, so the overhead ratio is not blurred by machine
noise between runs.

Method: each reader is called once untimed (warm-up: the file is then in the OS page cache, so
the figure is decode + conversion speed, not disk speed) and then ``--repeats`` times; the median
is reported. Throughput is the size of the volume as a float32 array (voxels × 4 bytes, 1 MB =
10⁶ bytes) divided by the median time, the same numerator for every reader of a file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.shared import shared_data_root
from radfm.eval.benchreport import (
    add_output_args,
    default_md_path,
    format_value,
    machine_info,
    timed,
    write_section,
)

log = logging.getLogger(__name__)

NAME = "io"
_TEXT_COLS = ("file", "shape", "plain reader", "plain dtype", "radfm dtype", "same voxels")
TITLE = "I/O: radfm.io.load_volume vs the plain library read"


@dataclass(frozen=True)
class Case:
    """One real file (or DICOM series folder) under the shared data root."""

    key: str
    label: str
    rel_path: str
    kind: str  # "dicom" | "nifti" | "nrrd"


CASES: tuple[Case, ...] = (
    Case("dicom", "CT DICOM series (TotalSegmentator, 20 slices)",
         "seg3d/totalsegmentator/example_ct_dicom", "dicom"),
    Case("nifti", "CT NIfTI .nii.gz (TotalSegmentator example_ct)",
         "seg3d/totalsegmentator/example_ct.nii.gz", "nifti"),
    Case("nrrd", "chest CT NRRD (pyradiomics lung1)", "seg3d/pyradiomics/lung1_image.nrrd", "nrrd"),
)


# --------------------------------------------------------------------------- plain readers
def _sitk_series(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise FileNotFoundError(f"no DICOM series in {path}")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
    return sitk.GetArrayFromImage(reader.Execute()).astype(np.float32, copy=False)


def _pydicom_series(path: Path) -> np.ndarray:
    """Stack a series with pydicom: sort by position along the slice normal, apply rescale."""
    import pydicom

    dss = [pydicom.dcmread(p) for p in sorted(Path(path).iterdir()) if p.is_file()]
    normal = np.cross(*np.asarray(dss[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    dss.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
    out = np.empty((len(dss), *dss[0].pixel_array.shape), dtype=np.float32)
    for k, d in enumerate(dss):
        slope, intercept = float(getattr(d, "RescaleSlope", 1)), float(getattr(d, "RescaleIntercept", 0))
        out[k] = d.pixel_array * slope + intercept
    return out


def _sitk_image_native(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _sitk_image(path: Path) -> np.ndarray:
    return _sitk_image_native(path).astype(np.float32, copy=False)


def _nib_fdata(path: Path) -> np.ndarray:
    import nibabel as nib

    return nib.load(str(path)).get_fdata(dtype=np.float32)


def _nib_dataobj(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


# Per file kind: (reader name, read function, whether radfm.io.load_volume is built on this library call).
PLAIN: dict[str, list[tuple[str, Callable[[Path], np.ndarray], bool]]] = {
    "dicom": [("pydicom stack + rescale", _pydicom_series, True),
              ("SimpleITK ImageSeriesReader", _sitk_series, False)],
    "nifti": [("nibabel asarray(dataobj)", _nib_dataobj, True),
              ("nibabel get_fdata(float32)", _nib_fdata, False),
              ("SimpleITK ReadImage → float32", _sitk_image, False)],
    "nrrd": [("SimpleITK ReadImage", _sitk_image_native, True),
             ("SimpleITK ReadImage → float32", _sitk_image, False)],
}


# --------------------------------------------------------------------------- helpers
def _radfm_io() -> Any | None:
    try:
        import radfm.io as rio
    except Exception as exc:  # a half-written core must not stop the plain-library half
        log.warning("radfm.io is not importable (%s: %s); timing the plain readers only",
                    type(exc).__name__, exc)
        return None
    if not hasattr(rio, "load_volume"):
        log.warning("radfm.io has no load_volume yet; timing the plain readers only")
        return None
    return rio


def _same_voxels(a: np.ndarray, b: np.ndarray) -> bool:
    """Same voxels up to axis order/flips (radfm reorients to RAS+): sorted shape and sums agree."""
    if sorted(a.shape) != sorted(b.shape):
        return False
    sa, sb = float(np.sum(a, dtype=np.float64)), float(np.sum(b, dtype=np.float64))
    return bool(np.isclose(sa, sb, rtol=1e-6, atol=1e-3 * a.size ** 0.5))


def _mb(n_voxels: int) -> float:
    return n_voxels * 4 / 1e6


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _disk_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


# --------------------------------------------------------------------------- the benchmark
def _bench_case(case: Case, path: Path, rio: Any | None, repeats: int, warmup: int,
                advance: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raw: dict[str, Any] = {"case": case.key, "path": str(path), "disk_mb": _disk_mb(path), "readers": {}}
    radfm_t = None
    radfm_arr = None
    if rio is not None:
        advance(f"{case.key}: radfm.io.load_volume")
        try:
            radfm_t = timed(lambda: rio.load_volume(path), repeats=repeats, warmup=warmup)
            radfm_arr = np.asarray(radfm_t.result.array)
            raw["readers"]["radfm.io.load_volume"] = {**radfm_t.to_dict(), "shape": list(radfm_arr.shape),
                                                      "dtype": str(radfm_arr.dtype),
                                                      "spacing": list(radfm_t.result.spacing)}
        except Exception as exc:
            log.warning("radfm.io.load_volume failed on %s: %s", path, exc)
            raw["readers"]["radfm.io.load_volume"] = {"error": f"{type(exc).__name__}: {exc}"}
            radfm_t = None
    rows: list[dict[str, Any]] = []
    for reader_name, fn, wrapped in PLAIN[case.kind]:
        advance(f"{case.key}: {reader_name}")
        t = timed(lambda fn=fn: fn(path), repeats=repeats, warmup=warmup)
        arr = np.asarray(t.result)
        mb = _mb(arr.size)
        raw["readers"][reader_name] = {**t.to_dict(), "shape": list(arr.shape), "dtype": str(arr.dtype),
                                       "radfm_builds_on": wrapped}
        row: dict[str, Any] = {
            "file": case.key, "shape": _fmt_shape(arr.shape), "MB f32": mb, "MB disk": raw["disk_mb"],
            "plain reader": reader_name + (" *" if wrapped else ""), "plain dtype": str(arr.dtype),
            "plain s": t.median_s, "plain MB/s": mb / t.median_s,
        }
        if radfm_t is not None and radfm_arr is not None:
            row.update({"radfm dtype": str(radfm_arr.dtype), "radfm s": radfm_t.median_s,
                        "radfm MB/s": _mb(radfm_arr.size) / radfm_t.median_s,
                        "radfm/plain": radfm_t.median_s / t.median_s,
                        "same voxels": "yes" if _same_voxels(radfm_arr, arr) else "NO"})
        else:
            row.update(dict.fromkeys(("radfm dtype", "radfm s", "radfm MB/s", "radfm/plain", "same voxels")))
        rows.append(row)
        del t, arr
    return rows, raw


def _bench_save_like(data: Path, rio: Any, repeats: int, warmup: int) -> dict[str, Any] | None:
    """Round-trip a uint8 mask on the NIfTI CT's grid: ``save_like`` + ``load_volume`` vs nibabel."""
    import nibabel as nib

    if not hasattr(rio, "save_like"):
        log.warning("radfm.io.save_like does not exist yet; skipping the mask round-trip")
        return None
    src = data / "seg3d/totalsegmentator/example_ct.nii.gz"
    vol = rio.load_volume(src)
    mask = (np.asarray(vol.array) > -200).astype(np.uint8)  # body-ish soft-tissue mask, a real shape
    img = nib.load(str(src))
    native_mask = (np.asarray(img.dataobj) > -200).astype(np.uint8)
    out: dict[str, Any] = {"source": str(src), "shape": list(mask.shape), "mask_voxels": int(mask.sum())}
    with tempfile.TemporaryDirectory(prefix="radfm-io-bench-") as tmp:
        p_radfm, p_plain = Path(tmp, "mask_radfm.nii.gz"), Path(tmp, "mask_plain.nii.gz")

        def radfm_rt() -> np.ndarray:
            rio.save_like(mask, vol, p_radfm)
            return np.asarray(rio.load_volume(p_radfm).array)

        def plain_rt() -> np.ndarray:
            nib.Nifti1Image(native_mask, img.affine).to_filename(str(p_plain))
            return np.asarray(nib.load(str(p_plain)).dataobj)

        try:
            t_r = timed(radfm_rt, repeats=repeats, warmup=warmup)
        except Exception as exc:
            log.warning("save_like round-trip failed: %s", exc)
            return {**out, "error": f"{type(exc).__name__}: {exc}"}
        t_p = timed(plain_rt, repeats=repeats, warmup=warmup)
        back_native = np.asarray(nib.load(str(p_radfm)).dataobj)
        out.update({
            "radfm": t_r.to_dict(), "plain": t_p.to_dict(),
            "radfm_roundtrip_exact": bool(np.array_equal(t_r.result, mask)),
            "file_on_native_grid_exact": bool(np.array_equal(back_native, native_mask)),
            "ratio": t_r.median_s / t_p.median_s,
        })
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radfm bench io", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="shared data root (default: $RADFM_SHARED_DATA, else ../shared/data from the cwd)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per reader; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (fills the page cache)")
    p.add_argument("--cases", nargs="+", choices=[c.key for c in CASES], default=[c.key for c in CASES],
                   help="subset of files to time")
    p.add_argument("--no-save-like", action="store_true", help="skip the save_like mask round-trip")
    add_output_args(p)
    return p


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Time radfm's loader against the plain libraries on real CT files; write docs + JSON; return results."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    argv = list(argv) if argv is not None else []
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    data = shared_data_root(args.data) or Path("../shared/data")
    if not (data / "MANIFEST.md").is_file() and not (data / "seg3d").is_dir():
        parser.exit(2, f"radfm bench io: shared data not found at {data.resolve()}.\n"
                       "Pass --data DIR or set RADFM_SHARED_DATA to the folder holding seg3d/ "
                       "(the real CT files this benchmark reads).\n")
    cases = [c for c in CASES if c.key in args.cases]
    missing = [str(data / c.rel_path) for c in cases if not (data / c.rel_path).exists()]
    if missing:
        parser.exit(2, "radfm bench io: missing data files:\n  " + "\n  ".join(missing) + "\n")

    rio = _radfm_io()
    machine = machine_info()
    import nibabel
    import SimpleITK as sitk

    versions = {"nibabel": nibabel.__version__, "SimpleITK": sitk.Version.VersionString(),
                "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), "numpy": np.__version__}
    with contextlib.suppress(Exception):
        import pydicom

        versions["pydicom"] = pydicom.__version__

    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
        console = Console(width=220)
    n_steps = sum(len(PLAIN[c.kind]) + (rio is not None) for c in cases)
    rows: list[dict[str, Any]] = []
    raw_cases: list[dict[str, Any]] = []
    with Progress(TextColumn("[bold]io bench[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task("", total=n_steps)
        first = [True]

        def advance(desc: str) -> None:
            if not first[0]:
                progress.advance(task)
            first[0] = False
            progress.update(task, description=desc)

        for case in cases:
            case_rows, raw = _bench_case(case, data / case.rel_path, rio, args.repeats, args.warmup, advance)
            rows.extend(case_rows)
            raw_cases.append(raw)
        progress.advance(task)
    save_like = None
    if rio is not None and not args.no_save_like:
        save_like = _bench_save_like(data, rio, args.repeats, args.warmup)

    table = Table(title=TITLE)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in _TEXT_COLS else "right")
    for r in rows:
        table.add_row(*(format_value(v) for v in r.values()))
    console.print(table)
    if save_like and "error" not in save_like:
        console.print(f"save_like round-trip (uint8 mask {_fmt_shape(tuple(save_like['shape']))}): "
                      f"radfm {save_like['radfm']['median_s']:.4f} s vs "
                      f"nibabel {save_like['plain']['median_s']:.4f} s "
                      f"(ratio {save_like['ratio']:.2f}); exact: {save_like['radfm_roundtrip_exact']}")

    command = shlex.join(["radfm", "bench", NAME, *argv])
    results: dict[str, Any] = {"name": NAME, "command": command, "machine": machine, "versions": versions,
                               "repeats": args.repeats, "warmup": args.warmup, "data": str(data.resolve()),
                               "radfm_io_available": rio is not None, "rows": rows, "cases": raw_cases,
                               "save_like": save_like}
    if not args.no_write:
        md = args.out if args.out is not None else default_md_path()
        json_path = write_section(md, NAME, title=TITLE, command=command, table=rows,
                                  notes=_notes(args, versions, save_like, rio is not None, data, cases),
                                  json_path=args.json_path, machine=machine,
                                  results={k: v for k, v in results.items() if k not in ("rows", "machine")})
        results["md_path"], results["json_path"] = str(md), str(json_path)
        log.info("wrote section %r of %s and %s", NAME, md, json_path)
    return results


def _notes(args: argparse.Namespace, versions: dict[str, Any], save_like: dict[str, Any] | None,
           have_radfm: bool, data: Path, cases: list[Case]) -> str:
    lines = [
        f"Median of {args.repeats} timed calls after {args.warmup} warm-up call(s), warm page cache; "
        "MB/s = voxels × 4 B (float32) / median seconds; `radfm/plain` = radfm median / plain median "
        "(> 1: radfm is slower); `*` marks the library call radfm.io itself builds on, so that row's ratio "
        "is "
        "radfm's own overhead (reorientation to RAS+, HU rescale, modality and geometry checks). "
        "`same voxels`: sorted shape and voxel sum agree (radfm reorients to RAS+).",
        "Files: " + "; ".join(f"`{c.key}` = {c.label}, `{c.rel_path}`" for c in cases) + ".",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    if not have_radfm:
        lines.append("**radfm.io was not importable in this run: only the plain readers were timed.**")
    if save_like is None:
        if have_radfm and not args.no_save_like:
            lines.append("`radfm.io.save_like` does not exist yet: no mask round-trip timed.")
    elif "error" in save_like:
        lines.append(f"Mask round-trip with `save_like` failed: `{save_like['error']}`.")
    else:
        lines.append(
            f"Mask round-trip (uint8 mask `CT > -200 HU` on example_ct, "
            f"{_fmt_shape(tuple(save_like['shape']))}, write .nii.gz + read back): "
            f"`save_like` + `load_volume` {save_like['radfm']['median_s']:.4f} s vs "
            f"nibabel `to_filename` + `load` {save_like['plain']['median_s']:.4f} s "
            f"(ratio {save_like['ratio']:.2f}); round-trip exact: {save_like['radfm_roundtrip_exact']}, "
            f"file on the native grid exact: {save_like['file_on_native_grid_exact']}.")
    return "\n\n".join(lines)
