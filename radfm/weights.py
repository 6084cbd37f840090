"""Check a model folder's files before a loader opens them: one clear line instead of a traceback.

Why: transformers and safetensors report a folder without ``model.safetensors`` as a
FileNotFoundError deep in ``safe_open``, and a folder holding only a pickle ``pytorch_model.bin``
as an UnpicklingError (refused, rightly: a pickle runs code when loaded) — both as tracebacks
that do not say what is wrong with the folder. radfm loads safetensors only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from radfm.errors import ConfigError

__all__ = ["PICKLE_SUFFIXES", "quiet_hub_progress", "require_model_files"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _error(problem: str, hint: str) -> ConfigError:
    err = ConfigError(problem, hint)
    err.http_status = 503  # type: ignore[attr-defined]  # in the server: its model, not the request, is broken
    return err


def require_model_files(folder: str | Path, what: str, *, tokenizer: bool = True, written_by: str = "") -> Path:
    """``folder`` if it holds ``config.json``, safetensors weights and (``tokenizer``) a tokenizer.

    Raises :class:`ConfigError` (HTTP 503 in the server) naming the folder by its base name and
    the missing piece; pickle weights get their own message. ``what`` names the model ("report
    model"), ``written_by`` the command that writes such folders (for the hint).
    """
    p = Path(folder)
    source = f"a folder written by `{written_by}`" if written_by else "the complete model folder"
    again = f"Copy {source} again, or point at one."
    if not p.is_dir():
        raise _error(f"the {what} folder {p.name!r} does not exist.", again)
    if not (p / "model.safetensors").is_file() and not (p / "model.safetensors.index.json").is_file():
        pickles = sorted(f.name for f in p.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _error(f"the {what} folder {p.name!r} holds only pickle weights ({', '.join(pickles[:3])}); "
                         "radfm loads model.safetensors only (a pickle file can run code when loaded).",
                         "Where you trust their origin, convert them: safetensors.torch.save_file("
                         "torch.load(FILE, weights_only=True), 'model.safetensors'); or use " + source + ".")
        raise _error(f"the {what} folder {p.name!r} has no model.safetensors (its weights).", again)
    if not (p / "config.json").is_file():
        raise _error(f"the {what} folder {p.name!r} has no config.json.", again)
    if tokenizer and not ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()):
        raise _error(f"the {what} folder {p.name!r} has no tokenizer (tokenizer.json).", again)
    return p


@contextlib.contextmanager
def quiet_hub_progress() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") for small local files.

    Why: radfm shows its own progress for long work; per-file bars of a few-MB checkpoint are noise.
    """
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
