"""Where the real, shared test data lives (``../shared/data``): one rule for the CLI, benchmarks and tests.

Why one function: the data is never copied into the project, and six slightly different lookups
(some from the working directory, some from the checkout, some wanting ``MANIFEST.md``) made a
benchmark and the tests disagree about the same machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from radfm.errors import ConfigError

__all__ = ["SHARED_DATA_ENV", "resolve_recipe_path", "shared_data_root"]

#: Environment variable that points at the shared data folder.
SHARED_DATA_ENV = "RADFM_SHARED_DATA"


def shared_data_root(path: str | Path | None = None) -> Path | None:
    """The shared data folder, or ``None`` when none is found.

    Order: ``path`` (as given, so an error can name it), ``$RADFM_SHARED_DATA`` (as given), then the
    first existing folder of ``../shared/data`` from the working directory and ``../shared/data``
    beside this checkout. Callers check the sub-folder they need and say how to point at it.
    """
    for explicit in (path, os.environ.get(SHARED_DATA_ENV)):
        if explicit:
            return Path(explicit).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared" / "data", checkout.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def resolve_recipe_path(name: str, what: str = "volume") -> Path:
    """A file a recipe names: as a path, else under the shared-data root; a ConfigError otherwise.

    Why an error and not a skip: a recipe must never silently train on less than it says.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    root = shared_data_root()
    if root is not None and (root / name).exists():
        return root / name
    raise ConfigError(f"{what} {name!r} of the recipe was not found (as a path, nor under the shared data root "
                      f"{root}).", "Fix `real:` in the recipe, set RADFM_SHARED_DATA, or pass real=[].")
