"""A study in from a DICOMweb server (QIDO-RS / WADO-RS) and SEG / SR objects back out (STOW-RS).

Why dicomweb-client: it is the kept reference client (the one highdicom's authors maintain), it
speaks the multipart WADO-RS and STOW-RS that Orthanc, dcm4chee and Google's healthcare API serve,
and it streams a series instance by instance (``iter_series``), so a pull holds one instance in
memory at a time.

PHI. A study's identifiers (names, IDs, UIDs, descriptions, dates) never reach output or logs:
series are listed by position with the allowlisted attributes of ``radfm.phi`` (modality, series
number, instance count), folders are named ``series_001`` … by that position, and errors name the
server and the HTTP status, never a UID. The files written are the study as the PACS holds it —
the user's data, on the user's disk — and nothing is overwritten: a pull goes to a new folder,
renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radfm.errors import ConfigError, InputError

__all__ = ["TOKEN_ENV", "PacsClient", "PullResult", "PushResult", "SeriesInfo"]

log = logging.getLogger(__name__)

#: Bearer token for servers that need one (read from the environment: never on a command line).
TOKEN_ENV = "RADFM_DICOMWEB_TOKEN"
_STORE_BATCH = 16


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study, as shown to users: its position and allowlisted attributes only."""

    index: int
    modality: str | None
    series_number: int | None
    instances: int | None
    uid: str = field(repr=False, default="")  # used to fetch; never printed

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "modality": self.modality, "series_number": self.series_number,
                "instances": self.instances}


@dataclass(frozen=True)
class PullResult:
    folder: Path
    series: list[Path]
    instances: int


@dataclass(frozen=True)
class PushResult:
    stored: int
    failed: int


def _tag_value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class PacsClient:
    """A DICOMweb server at ``url`` (e.g. ``http://localhost:8042/dicom-web``)."""

    def __init__(self, url: str, *, token: str | None = None) -> None:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError as exc:  # the [serve] extra
            raise ConfigError("PACS access needs dicomweb-client.", 'pip install "radfm[serve]"') from exc
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the DICOMweb URL must start with http:// or https://, got {url!r}.")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(url=self.url, headers=headers)

    # --- errors ------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if status == 404:
                raise InputError(f"{what}: not found on {self.url} (HTTP 404).",
                                 "Check the study (and series) you asked for.") from None
            if status in (401, 403):
                raise ConfigError(f"{what}: {self.url} refused the request (HTTP {status}).",
                                  f"Set {TOKEN_ENV} to a token the server accepts.") from None
            raise InputError(f"{what}: {self.url} answered HTTP {status}.") from None
        except requests.ConnectionError:
            raise ConfigError(f"{what}: cannot reach the DICOMweb server at {self.url}.",
                              "Check the URL and that the server is running.") from None

    # --- query -------------------------------------------------------------------------------
    def series(self, study_uid: str) -> list[SeriesInfo]:
        """The study's series, ordered by series number (then as the server lists them)."""
        _check_uid(study_uid)
        found = self._call("listing the study's series", self._client.search_for_series,
                           study_instance_uid=study_uid, get_remaining=True)
        if not found:
            raise InputError(f"listing the study's series: {self.url} holds no series for that study.",
                             "Check the StudyInstanceUID.")
        items = []
        for item in found:
            uid = _tag_value(item, "0020000E")
            if not uid:
                continue
            items.append((_as_int(_tag_value(item, "00200011")), str(uid), _tag_value(item, "00080060"),
                          _as_int(_tag_value(item, "00201209"))))
        items.sort(key=lambda t: (t[0] is None, t[0] or 0))
        return [SeriesInfo(index=i + 1, modality=str(mod) if mod else None, series_number=num, instances=n, uid=uid)
                for i, (num, uid, mod, n) in enumerate(items)]

    def choose(self, study_uid: str, *, index: int | None = None, series_number: int | None = None,
               ) -> list[SeriesInfo]:
        """The series a pull takes: one by position or by series number, or all of them."""
        listed = self.series(study_uid)
        if index is not None:
            sel = [s for s in listed if s.index == index]
            if not sel:
                raise InputError(f"the study has {len(listed)} series; --series-index {index} is not one of "
                                 f"1..{len(listed)}.")
            return sel
        if series_number is not None:
            sel = [s for s in listed if s.series_number == series_number]
            if not sel:
                known = sorted({s.series_number for s in listed if s.series_number is not None})
                raise InputError(f"no series with number {series_number} in the study (numbers: {known}).")
            return sel
        return listed

    # --- pull --------------------------------------------------------------------------------
    def pull(self, study_uid: str, out: str | Path, *, index: int | None = None,
             series_number: int | None = None, progress: bool = False) -> PullResult:
        """Write the chosen series under ``out/series_NNN/`` (``out`` must not exist or be empty)."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"{out} already exists and is not an empty folder; nothing was written.",
                             "Give a new folder for the pulled study.")
        chosen = self.choose(study_uid, index=index, series_number=series_number)
        partial = out.with_name(out.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        folders, count = [], 0
        try:
            for s in chosen:
                folder = partial / f"series_{s.index:03d}"
                folder.mkdir()
                for k, ds in enumerate(self._instances(study_uid, s, progress=progress)):
                    ds.save_as(folder / f"{k + 1:05d}.dcm", enforce_file_format=True)
                    count += 1
                folders.append(out / folder.name)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if out.exists():
            out.rmdir()
        partial.rename(out)
        log.info("pulled %d instance(s) in %d series from %s", count, len(folders), self.url)
        return PullResult(folder=out, series=folders, instances=count)

    def _instances(self, study_uid: str, s: SeriesInfo, *, progress: bool) -> Iterator[Any]:
        # transfer-syntax=*: as stored. Asking for a transcode fails on servers that cannot (Orthanc
        # answers 500 for JPEG 2000 → explicit little endian) and would re-encode lossy data anyway.
        it = self._call(f"retrieving series {s.index}", self._client.iter_series, study_uid, s.uid,
                        media_types=(("application/dicom", "*"),))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=s.instances, desc=f"series {s.index}", unit="instance")
        yield from _guard(it, f"retrieving series {s.index}", self)

    # --- push --------------------------------------------------------------------------------
    def push(self, paths: Iterable[str | Path]) -> PushResult:
        """Store DICOM files (SEG, SR, images; folders are searched) on the server (STOW-RS)."""
        import pydicom

        files = _dicom_files(paths)
        if not files:
            raise InputError("nothing to push: no DICOM file among the paths given.")
        stored = failed = 0
        for i in range(0, len(files), _STORE_BATCH):
            batch = []
            for f in files[i:i + _STORE_BATCH]:
                try:
                    batch.append(pydicom.dcmread(f))
                except Exception:
                    raise InputError(f"{f} is not a readable DICOM file; nothing after it was pushed.") from None
            response = self._call("storing DICOM objects", self._client.store_instances, datasets=batch)
            # count what the server says it stored: Orthanc answers 200 with empty sequences for objects it
            # refused (e.g. no SOPInstanceUID), so a missing failure list is not a success
            ok = len(getattr(response, "ReferencedSOPSequence", None) or []) if response is not None else 0
            stored += ok
            failed += len(batch) - ok
        log.info("pushed %d object(s) to %s (%d refused)", stored, self.url, failed)
        return PushResult(stored=stored, failed=failed)


def _guard(it: Iterable[Any], what: str, client: PacsClient) -> Iterator[Any]:
    """Iterate ``it`` with the client's error mapping around every step (the stream can fail midway)."""
    iterator = iter(it)
    while True:
        try:
            item = client._call(what, next, iterator)
        except StopIteration:
            return
        yield item


def _check_uid(uid: str) -> None:
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise InputError("a StudyInstanceUID is digits and dots, at most 64 characters.")


def _dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and _looks_dicom(q))
        elif p.is_file():
            if not _looks_dicom(p):
                raise InputError(f"{p} is not a DICOM file (no DICM preamble).")
            out.append(p)
        else:
            raise InputError(f"{p} does not exist.")
    return out


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
