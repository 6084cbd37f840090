"""The raw-data files: fastMRI-style k-space HDF5, sinogram HDF5, and the reconstruction outputs.

Formats (fixed by issue 13 so other tools interoperate):

* MRI: ``kspace`` complex64 ``(slices, H, W)`` (single-coil) or ``(slices, coils, H, W)``, centred
  orthonormal FFT (fastMRI ``fft2c``), already masked; ``mask`` float32 ``(W,)`` (1 = acquired
  column); optional attrs ``acceleration``, ``center_fraction``, ``ismrmrd_header``.
* CT: ``sinogram`` float32 ``(slices, views, detectors)``, ``angles`` float32 ``(views,)``; attrs
  ``geometry`` (``parallel``; ``fan`` is refused: not implemented), ``angles_unit`` (``degree`` or
  ``radian``), ``units = relative_to_water`` (``skimage.transform.radon(image, theta, circle=True)``
  of ``(HU + 1000) / 1000``; detectors = image width).
* Output: ``OUT.h5`` with ``reconstruction`` float32 ``(slices, H, W)`` (magnitude for MRI, HU for
  CT), or ``OUT.nii.gz`` with the spacing from the attr ``spacing`` or ``--spacing``.

Why every check names the dataset: a wrong file should fail with "``mask`` has 320 entries but
``kspace`` is 368 wide", not with a broadcasting error deep inside the network. Outputs are written
to a temporary file in the target folder and renamed, so a failed run never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from radfm.errors import InputError

__all__ = ["RawData", "read_raw", "write_kspace_h5", "write_reconstruction", "write_sinogram_h5"]


@dataclass
class RawData:
    """One validated raw file. ``kind`` is ``"kspace"`` or ``"sinogram"``.

    ``data``: k-space ``(S, C, H, W)`` complex64 (single-coil files get ``C = 1`` and
    ``multicoil=False``) or the sinogram ``(S, V, D)`` float32; ``mask`` ``(W,)`` (MRI);
    ``angles_deg`` ``(V,)`` (CT, converted to degrees); ``attrs`` the file's attributes.
    """

    kind: Literal["kspace", "sinogram"]
    data: np.ndarray
    mask: np.ndarray | None = None
    angles_deg: np.ndarray | None = None
    multicoil: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """``attrs["spacing"]`` as (x = column, y = row, z = slice) mm, when the file gives it."""
        s = self.attrs.get("spacing")
        if s is None:
            return None
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise InputError(f"attribute 'spacing' must be three positive mm values (x, y, z), got {s.tolist()}.")
        return (float(s[0]), float(s[1]), float(s[2]))


def _attrs(f: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
    return out


def _finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise InputError(f"dataset '{name}' holds {int(bad.sum())} NaN/inf value(s).",
                         "Raw data must be finite; fix or drop the affected slices.")


def _read_kspace(f: Any, path: Path) -> RawData:
    ks = f["kspace"]
    if ks.dtype != np.complex64:
        raise InputError(f"dataset 'kspace' in {path.name} is {ks.dtype}, not complex64.",
                         "Store k-space as complex64 (fastMRI layout), e.g. kspace.astype(np.complex64).")
    if ks.ndim not in (3, 4):
        raise InputError(f"dataset 'kspace' has shape {ks.shape}; expected (slices, H, W) single-coil or "
                         "(slices, coils, H, W) multi-coil.")
    if "mask" not in f:
        raise InputError(f"{path.name} has 'kspace' but no dataset 'mask'.",
                         "Add 'mask' float32 (W,), 1 for each acquired k-space column.")
    m = f["mask"]
    if m.dtype.kind not in "fiub":
        raise InputError(f"dataset 'mask' is {m.dtype}; expected float32 (W,) of 0/1.")
    mask = np.asarray(m[()], dtype=np.float32).reshape(-1) if m.ndim == 1 else None
    width = ks.shape[-1]
    if mask is None or mask.size != width:
        raise InputError(f"dataset 'mask' has shape {m.shape} but 'kspace' is {width} columns wide.",
                         "The mask is one entry per k-space column (the last axis of 'kspace').")
    _finite("mask", mask)
    if not np.all((mask == 0) | (mask == 1)):
        raise InputError("dataset 'mask' must hold only 0 and 1.")
    if mask.sum() == 0:
        raise InputError("dataset 'mask' acquires no column.")
    data = np.asarray(ks[()])
    _finite("kspace", data)
    if min(data.shape[-2:]) < 16 or data.shape[0] < 1:
        raise InputError(f"dataset 'kspace' of shape {data.shape} is too small (H and W >= 16, >= 1 slice).")
    multicoil = data.ndim == 4
    data = data if multicoil else data[:, None]
    return RawData("kspace", np.ascontiguousarray(data), mask=mask, multicoil=multicoil, attrs=_attrs(f))


def _read_sinogram(f: Any, path: Path) -> RawData:
    sg = f["sinogram"]
    if sg.dtype != np.float32:
        raise InputError(f"dataset 'sinogram' in {path.name} is {sg.dtype}, not float32.")
    if sg.ndim != 3:
        raise InputError(f"dataset 'sinogram' has shape {sg.shape}; expected (slices, views, detectors).")
    if "angles" not in f:
        raise InputError(f"{path.name} has 'sinogram' but no dataset 'angles'.",
                         "Add 'angles' float32 (views,) and the attribute angles_unit ('degree' or 'radian').")
    a = f["angles"]
    if a.dtype.kind != "f" or a.ndim != 1 or a.shape[0] != sg.shape[1]:
        raise InputError(f"dataset 'angles' is {a.dtype} {a.shape}; expected float (views,) with views = "
                         f"{sg.shape[1]} (axis 1 of 'sinogram').")
    attrs = _attrs(f)
    geometry = str(attrs.get("geometry", "parallel"))
    if geometry != "parallel":
        raise InputError(f"attribute geometry = {geometry!r}: only 'parallel' beam is implemented.",
                         "Rebin fan-beam data to parallel beam first (fan beam is not supported yet).")
    unit = str(attrs.get("angles_unit", "degree"))
    if unit not in ("degree", "radian"):
        raise InputError(f"attribute angles_unit = {unit!r}; expected 'degree' or 'radian'.")
    units = str(attrs.get("units", "relative_to_water"))
    if units != "relative_to_water":
        raise InputError(f"attribute units = {units!r}; only 'relative_to_water' is defined "
                         "(skimage radon of (HU + 1000) / 1000 with circle=True).")
    angles = np.asarray(a[()], dtype=np.float64)
    _finite("angles", angles)
    data = np.asarray(sg[()])
    _finite("sinogram", data)
    if data.shape[2] < 16 or data.shape[1] < 4:
        raise InputError(f"dataset 'sinogram' of shape {data.shape} is too small (>= 4 views, >= 16 detectors).")
    angles_deg = np.rad2deg(angles) if unit == "radian" else angles
    return RawData("sinogram", np.ascontiguousarray(data), angles_deg=angles_deg.astype(np.float32), attrs=attrs)


def read_raw(path: str | Path) -> RawData:
    """Open an HDF5 raw file and validate it; k-space or sinogram is told by the dataset it holds."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} does not exist.")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p.name} is not an HDF5 file ({exc}).",
                         "radfm reconstruct reads fastMRI-style HDF5 with 'kspace' or 'sinogram'.") from None
    with f:
        if "kspace" in f:
            return _read_kspace(f, p)
        if "sinogram" in f:
            return _read_sinogram(f, p)
        raise InputError(f"{p.name} holds neither a 'kspace' nor a 'sinogram' dataset (found: {sorted(f.keys())}).",
                         "MRI: 'kspace' complex64 + 'mask'; CT: 'sinogram' float32 + 'angles'.")


def _atomic(out: Path, write: Any) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(out.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".radfm-", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def write_reconstruction(recon: np.ndarray, out: str | Path, *, spacing: tuple[float, float, float] | None = None,
                         attrs: dict[str, Any] | None = None) -> Path:
    """``recon`` ``(slices, H, W)`` → ``.h5`` (dataset ``reconstruction`` float32) or ``.nii``/``.nii.gz``.

    NIfTI stores the array as (x = column, y = row, z = slice) with ``spacing`` (x, y, z) mm on a
    diagonal affine (raw data carry no patient orientation; default spacing 1 mm).
    """
    out = Path(out)
    arr = np.ascontiguousarray(recon, dtype=np.float32)
    if arr.ndim != 3:
        raise InputError(f"a reconstruction is (slices, H, W), got shape {arr.shape}.")
    name = out.name.lower()
    if name.endswith((".h5", ".hdf5")):
        import h5py

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("reconstruction", data=arr)
                for k, v in (attrs or {}).items():
                    f.attrs[k] = v

        return _atomic(out, write)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        sx, sy, sz = spacing or (1.0, 1.0, 1.0)
        img = nib.Nifti1Image(arr.transpose(2, 1, 0), np.diag([sx, sy, sz, 1.0]))
        img.header.set_xyzt_units("mm")
        return _atomic(out, lambda tmp: nib.save(img, str(tmp)))
    raise InputError(f"--out {out.name}: use a .h5 (fastMRI 'reconstruction') or .nii.gz file name.")


def write_kspace_h5(path: str | Path, kspace: np.ndarray, mask: np.ndarray, **attrs: Any) -> Path:
    """Write a fastMRI-style k-space file (used by the benchmark, tests and simulation)."""
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=np.asarray(kspace, dtype=np.complex64))
            f.create_dataset("mask", data=np.asarray(mask, dtype=np.float32))
            for k, v in attrs.items():
                f.attrs[k] = v

    return _atomic(Path(path), write)


def write_sinogram_h5(path: str | Path, sinogram: np.ndarray, angles_deg: np.ndarray, **attrs: Any) -> Path:
    """Write a sinogram file (parallel beam, degrees, relative_to_water unless ``attrs`` say otherwise)."""
    import h5py

    meta = {"geometry": "parallel", "angles_unit": "degree", "units": "relative_to_water", **attrs}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("sinogram", data=np.asarray(sinogram, dtype=np.float32))
            f.create_dataset("angles", data=np.asarray(angles_deg, dtype=np.float32))
            for k, v in meta.items():
                f.attrs[k] = v

    return _atomic(Path(path), write)
