"""Fuzz targets, one per loader: bytes → a file of that format → ``load_volume``.

Anything but a radfm user error (``RadfmError``) escaping is a bug, and so is a file that grows
the process past the memory cap. Runs under atheris when it is installed (coverage-guided)::

    python -m tests.hostile.fuzz nifti_gz -atheris_runs=200000      # one loader, libFuzzer flags

and otherwise (or with ``--plain SECONDS``) under plain random mutation of valid seeds::

    python -m tests.hostile.fuzz --plain 600 all                     # the longer documented run

The CI test (``test_fuzz.py``) runs the plain mutator for about a second per loader.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import random
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from radfm.errors import RadfmError

os.environ.setdefault("RADFM_MAX_IMAGE_BYTES", str(256 << 20))
_TMP = Path(tempfile.mkdtemp(prefix="radfm-fuzz-"))


def _seeds() -> dict[str, tuple[str, bytes]]:
    from tests.hostile.corpus import _nifti_bytes, _nrrd
    from tests.hostile.corpus_dicom import _bytes, _ds

    raw = np.arange(8 * 8 * 6, dtype="<i2").tobytes()
    nii = _nifti_bytes((8, 8, 6))
    npy = io.BytesIO()
    np.save(npy, np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6))
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("vol.npy", npy.getvalue())
    mha = (b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 6\nElementType = MET_SHORT\nCompressedData = True\n"
           b"ElementDataFile = LOCAL\n") + __import__("zlib").compress(raw)
    return {"nifti": (".nii", nii), "nifti_gz": (".nii.gz", gzip.compress(nii, mtime=0)),
            "nrrd": (".nrrd", _nrrd("8 8 6", "gzip", gzip.compress(raw, mtime=0))), "mha": (".mha", mha),
            "npy": (".npy", npy.getvalue()), "npz": (".npz", npz.getvalue()), "dicom": (".dcm", _bytes(_ds(rows=8, cols=8)))}


def make_target(loader: str) -> Callable[[bytes], None]:
    """The one-input function atheris (or the plain mutator) calls."""
    from radfm.io import load_volume

    suffix = _seeds()[loader][0]
    path = _TMP / f"input{suffix}"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load_volume(path)
        except RadfmError:
            pass
    return target


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, random runs, cuts, duplications and boundary integers (lengths, dims)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del b[pos:pos + rng.randint(1, 64)]
        elif op == 3 and b:
            b[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"])
        elif op == 4:
            b = b[: rng.randrange(len(b) + 1)]
        else:
            b[pos:pos] = b[pos:pos + rng.randint(1, 256)]
    return bytes(b)


def plain_run(loader: str, seconds: float, seed: int = 0) -> int:
    """Mutate the loader's seed for ``seconds``; return the number of inputs tried (raises on a bug)."""
    target = make_target(loader)
    base = _seeds()[loader][1]
    rng = random.Random(seed)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        data = mutate(base, rng)
        try:
            target(data)
        except Exception as exc:
            crash = _TMP / f"crash-{loader}-{n}{_seeds()[loader][0]}"
            crash.write_bytes(data)
            raise AssertionError(f"{loader}: {type(exc).__name__} escaped (input saved to {crash})") from exc
        n += 1
    return n


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    if argv and argv[0] == "--plain":
        seconds, names = float(argv[1]), argv[2:] or ["all"]
        loaders = list(_seeds()) if names == ["all"] else names
        for loader in loaders:
            print(loader, plain_run(loader, seconds / len(loaders)), "inputs, no escapes")
        return 0
    import atheris

    loader = argv[0]
    target = make_target(loader)
    seed_dir = _TMP / f"seeds-{loader}"
    seed_dir.mkdir(exist_ok=True)
    (seed_dir / "seed").write_bytes(_seeds()[loader][1])
    atheris.Setup([sys.argv[0], *argv[1:], str(seed_dir)], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
