"""Instance optimisation: a few Adam steps on one pair's field, starting from the network's guess.

Why (off by default): a network amortises registration over a training set and leaves a
residual error on any one pair; a few gradient steps of the classical objective on that pair
(similarity + smoothness) remove part of it, at a cost that grows with the steps (Learn2Reg
winners do this). It runs on the model grid (2 mm by default), so each step is cheap.

Fields are ``(1, 3, D, H, W)`` voxels of the model grid, convention ``warped(x) = moving(x + u(x))``.
For a diffeomorphic model the stationary velocity is optimised and integrated at every step,
so the result stays diffeomorphic.
"""

from __future__ import annotations

import torch

from radfm.tasks.registration import functional as RF
from radfm.tasks.registration import losses as L

__all__ = ["optimise_field"]


def optimise_field(fixed: torch.Tensor, moving: torch.Tensor, init: torch.Tensor, *, steps: int,
                   svf: bool = False, similarity: str = "ncc", lr: float = 0.05, smooth_weight: float = 1.0,
                   int_steps: int = 7) -> torch.Tensor:
    """Refine ``init`` for one pair and return the displacement field.

    Args:
        fixed, moving: ``(1, 1, D, H, W)`` normalised images on the model grid.
        init: ``(1, 3, D, H, W)`` starting displacement, or starting velocity when ``svf``.
        steps: Adam steps (0 returns ``init`` integrated if ``svf``).
        svf: optimise a stationary velocity field (integrated by scaling and squaring).
        similarity: "ncc" (local NCC) or "mi" (mutual information, CT↔MR).
        lr: Adam step in voxels (the parameters are the field itself).
        smooth_weight: weight of the diffusion regulariser.
        int_steps: scaling-and-squaring steps when ``svf``.
    """
    param = init.detach().float().clone().requires_grad_(True)
    if steps <= 0:
        return RF.integrate_velocity(param.detach(), int_steps) if svf else param.detach()
    sim = L.similarity_loss(similarity)
    smooth = L.GradientSmoothness()
    opt = torch.optim.Adam([param], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            u = RF.integrate_velocity(param, int_steps) if svf else param
            loss = sim(RF.warp(moving, u), fixed) + smooth_weight * smooth(param)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return RF.integrate_velocity(param, int_steps) if svf else param.detach()
