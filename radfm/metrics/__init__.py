"""Pure metrics on arrays, tensors and strings, in the core so tasks, adapters and benchmarks share them.

Conventions (stated once, used everywhere):

* Every array metric accepts numpy arrays or torch tensors (moved to CPU numpy) and returns a
  python ``float`` (or ``dict[int, float]`` per label, or a numpy array for voxel-wise maps).
* Masks are label maps of one case, ``(*spatial)`` (no batch/channel axis). ``labels=None``
  means binary (non-zero is foreground); ``labels=[1, 3]`` returns ``{1: value, 3: value}``.
* ``spacing`` is the voxel size in mm in the array's own axis order; distances are in mm.
* Empty masks:

  ================================  ======  ===========================  =============
  case                              Dice    HD95                         surface Dice
  ================================  ======  ===========================  =============
  both empty                        1.0     0.0                          1.0
  exactly one empty                 0.0     ``empty_value`` (nan)        0.0
  ================================  ======  ===========================  =============

Nothing here keeps state; accumulate per-case values with ``radfm.eval.accumulate.MetricAccumulator``.
"""

from __future__ import annotations

from radfm.metrics.clinical import clinical_efficacy, label_prf, set_prf
from radfm.metrics.deformation import folding_fraction, jacobian_determinant, jacobian_stats
from radfm.metrics.image import mae, psnr, ssim
from radfm.metrics.mentions import Mention, extract_mentions, finding_labels, report_status, split_sentences
from radfm.metrics.overlap import dice, dice_score
from radfm.metrics.surface import hd95, surface_dice
from radfm.metrics.vocabulary import CHEST_LABELS, IU_MESH_TO_LABEL, LabelSpec, labels_from_mesh

__all__ = [
    "CHEST_LABELS",
    "IU_MESH_TO_LABEL",
    "LabelSpec",
    "Mention",
    "clinical_efficacy",
    "dice",
    "dice_score",
    "extract_mentions",
    "finding_labels",
    "folding_fraction",
    "hd95",
    "jacobian_determinant",
    "jacobian_stats",
    "label_prf",
    "labels_from_mesh",
    "mae",
    "psnr",
    "report_status",
    "set_prf",
    "split_sentences",
    "ssim",
    "surface_dice",
]
