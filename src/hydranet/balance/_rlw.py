"""Random loss weighting (Lin et al., 2022, https://arxiv.org/abs/2111.10603).

Each step: z ~ N(0, I_K), w = softmax(z), L = sum_t w_t L_t (weights sum to 1, the paper's
normal-softmax variant). Draws come from a generator whose state is a buffer of this balancer,
so a resumed run draws the same weights. K normal draws are made every step (absent tasks
included) and the softmax is taken over the present tasks, so the sequence of draws does not
depend on which labels a batch has.
"""

from __future__ import annotations

import torch

from hydranet.balance._rng import SeededStream
from hydranet.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("rlw")
class RandomLossWeighting(LossWeighting):
    """Fresh softmax-of-Gaussian weights every step."""

    param_constraints = {"seed": int}

    def __init__(self, tasks: list[str], seed: int = 0):
        super().__init__(tasks)
        self.rng = SeededStream(seed)

    def weights(self, losses, ctx):
        z = self.rng.draw(lambda g: torch.randn(len(self.tasks), generator=g, dtype=torch.float64))
        present = torch.tensor([bool(ctx.present.get(t, True)) for t in self.tasks])
        z = torch.where(present, z, torch.full_like(z, -torch.inf))
        w = torch.softmax(z, 0) if present.any() else torch.zeros_like(z)
        return dict(zip(self.tasks, w.tolist(), strict=True))
