"""Geometric loss strategy (Chennupati et al., 2019, https://arxiv.org/abs/1904.08492).

L = (prod_t L_t)^(1/K), whose gradient is sum_t (L / (K L_t)) grad L_t. It is applied as a
weighted sum with the detached effective weights w_t = L_geo / (K L_t), which gives the same
gradient and keeps the loss scale of a mean. Needs positive losses: K counts the tasks present
in the batch with a loss above 0 (a task whose loss is exactly 0, e.g. a masked loss over no
labeled rows, gets weight 0 instead of sending the geometric mean to 0).
"""

from __future__ import annotations

import torch

from hydranet.balance.base import BALANCERS, LossWeighting
from hydranet.params import PositiveFloat


@BALANCERS.register("gls")
class GeometricLossStrategy(LossWeighting):
    """Minimise the geometric mean of the task losses."""

    param_constraints = {"eps": PositiveFloat}

    def __init__(self, tasks: list[str], eps: float = 1e-12):
        super().__init__(tasks)
        self.eps = float(eps)

    def weights(self, losses, ctx):
        present = [t for t in self.tasks if ctx.present.get(t, True) and t in losses]
        # a loss of exactly 0 is how the trainer's masked loss reads with no labels: leave it out
        present = [t for t in present if float(losses[t].detach()) > 0]
        if not present:
            return {t: 0.0 for t in self.tasks}
        vals = torch.stack([losses[t].detach().float().clamp_min(self.eps) for t in present])
        w = gls_weights(vals)
        got = dict(zip(present, w, strict=True))
        return {t: got.get(t, torch.zeros(())) for t in self.tasks}


def gls_weights(losses: torch.Tensor) -> torch.Tensor:
    """w_t = (prod L)^(1/K) / (K L_t) for a vector of positive losses."""
    geo = losses.log().mean().exp()
    return geo / (losses.numel() * losses)
