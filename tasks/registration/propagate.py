"""The 4D hook: carry a label map through a series of volumes (e.g. respiratory phases).

Why chaining: neighbouring phases differ by small motions that a registration model handles
well, while phase 0 to phase 5 may be a large motion. ``chain="sequential"`` registers each
volume to the previous one and warps the previous labels (small steps; errors accumulate
slowly); ``chain="direct"`` registers every volume to volume 0 (no accumulation, larger
motions). Both return one label map per volume, the first being ``labels0`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from radfm.errors import InputError
from radfm.io import Volume
from radfm.tasks.registration.api import load_model, register
from radfm.tasks.registration.model import RadFMRegistration

__all__ = ["propagate_labels"]


def propagate_labels(volumes: Sequence[Volume], labels0: Volume, *,
                     model: RadFMRegistration | str | Path | None = None,
                     chain: Literal["sequential", "direct"] = "sequential", **register_kwargs: Any) -> list[Volume]:
    """Labels of ``volumes[0]`` propagated to every volume.

    Args:
        volumes: the series, e.g. the phases of a 4D CT, each a 3D ``Volume`` (grids may differ).
        labels0: label map on ``volumes[0]``'s grid.
        model: as in :func:`register` (loaded once and reused).
        chain: "sequential" (t-1 -> t) or "direct" (0 -> t).
        register_kwargs: passed to :func:`register` (``instance_steps``, ``diffeomorphic`` …).

    Returns:
        ``len(volumes)`` label Volumes, each on its volume's grid; ``[0]`` is ``labels0``.
    """
    if len(volumes) < 1:
        raise InputError("propagate_labels needs at least one volume.")
    if chain not in ("sequential", "direct"):
        raise InputError(f"chain must be 'sequential' or 'direct', got {chain!r}.")
    net = load_model(model)
    out = [labels0]
    for t in range(1, len(volumes)):
        src = t - 1 if chain == "sequential" else 0
        result = register(volumes[t], volumes[src], model=net, labels=out[src], **register_kwargs)
        assert result.warped_labels is not None
        out.append(result.warped_labels)
    return out
