"""Small loss classes for registration (VoxelMorph style): similarity, regularity, supervision.

Every loss takes model-order tensors: images ``(B, 1, D, H, W)``, fields ``(B, 3, D, H, W)`` in
voxels (see ``functional.py``), and returns a scalar to MINIMISE. Similarities come from MONAI
where MONAI has them (local NCC, global mutual information, bending energy), so their
numerics are the well-trodden ones; the rest are a few lines each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radfm.errors import ConfigError
from radfm.tasks.registration import functional as RF

__all__ = [
    "BendingEnergy",
    "FieldError",
    "FoldingPenalty",
    "GradientSmoothness",
    "LabelDice",
    "LocalNCC",
    "MutualInformation",
    "similarity_loss",
]


class LocalNCC(nn.Module):
    """``-`` local normalised cross-correlation in a ``kernel_size``³ window (MONAI), in [-1, 0].

    The usual mono-modal similarity (VoxelMorph uses a 9³ window): insensitive to local
    brightness and contrast changes, e.g. an MR bias field.
    """

    def __init__(self, kernel_size: int = 9) -> None:
        super().__init__()
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=kernel_size,
                                                       kernel_type="rectangular")

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.ncc(warped.float(), fixed.float())


class MutualInformation(nn.Module):
    """``-`` global mutual information (MONAI, Parzen windows): the multi-modal (CT↔MR) similarity.

    Inputs are rescaled to [0, 1] per image first (MONAI's bins assume that range).
    """

    def __init__(self, num_bins: int = 32) -> None:
        super().__init__()
        from monai.losses import GlobalMutualInformationLoss

        self.mi = GlobalMutualInformationLoss(num_bins=num_bins)

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1, 1)
        return (x.float() - lo) / (hi - lo).clamp_min(1e-6)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.mi(self._unit(warped), self._unit(fixed))


def similarity_loss(name: str) -> nn.Module:
    """``"ncc"`` -> :class:`LocalNCC`, ``"mi"`` -> :class:`MutualInformation`."""
    if name == "ncc":
        return LocalNCC()
    if name == "mi":
        return MutualInformation()
    raise ConfigError(f"unknown similarity {name!r}.", "Use 'ncc' (same modality) or 'mi' (CT↔MR).")


class GradientSmoothness(nn.Module):
    """Diffusion regulariser: mean squared forward difference of the field (VoxelMorph ``Grad('l2')``)."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        dz = u[:, :, 1:] - u[:, :, :-1]
        dy = u[:, :, :, 1:] - u[:, :, :, :-1]
        dx = u[..., 1:] - u[..., :-1]
        return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


class BendingEnergy(nn.Module):
    """Bending energy (second derivatives squared, MONAI ``BendingEnergyLoss``): penalises curvature
    but not affine parts, so it keeps large smooth motions cheap."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import BendingEnergyLoss

        self.be = BendingEnergyLoss(normalize=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.be(u.float())


class FoldingPenalty(nn.Module):
    """Mean ``relu(margin - det(I + ∇u))``: zero where the map keeps orientation, grows where it folds.

    ``margin`` > 0 also discourages near-singular compression (Mok & Chung 2020 use 0).
    """

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        det = RF.jacobian_determinant(u.float())
        return F.relu(self.margin - det).mean()


class LabelDice(nn.Module):
    """``1 -`` soft Dice of warped one-hot labels vs fixed labels (weak supervision).

    ``moving_labels``/``fixed_labels``: ``(B, 1, D, H, W)`` integer maps; the moving one-hot is
    warped trilinearly (differentiable in the field). Label 0 (background) is ignored, and so
    are labels absent from both images.
    """

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = int(num_labels)

    def forward(self, u: torch.Tensor, moving_labels: torch.Tensor, fixed_labels: torch.Tensor) -> torch.Tensor:
        k = self.num_labels
        mov = F.one_hot(moving_labels[:, 0].long().clamp(0, k - 1), k).permute(0, 4, 1, 2, 3).float()[:, 1:]
        fix = F.one_hot(fixed_labels[:, 0].long().clamp(0, k - 1), k).permute(0, 4, 1, 2, 3).float()[:, 1:]
        warped = RF.warp(mov, u, mode="linear", padding="zeros")
        inter = (warped * fix).flatten(2).sum(-1)
        denom = (warped + fix).flatten(2).sum(-1)
        present = denom > 0
        dice = (2 * inter + 1e-5) / (denom + 1e-5)
        return 1.0 - dice[present].mean() if bool(present.any()) else u.sum() * 0.0


class FieldError(nn.Module):
    """Mean endpoint error in voxels between a predicted and a known field (field supervision)."""

    def forward(self, u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (u.float() - target.float()).pow(2).sum(dim=1).add(1e-8).sqrt().mean()
