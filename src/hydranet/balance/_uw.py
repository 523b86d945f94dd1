"""Uncertainty weighting (Kendall, Gal & Cipolla, 2018, https://arxiv.org/abs/1705.07115).

L = sum_t 1/2 exp(-s_t) L_t + 1/2 s_t with learned log-variances s_t = log sigma_t^2 (the
homoscedastic-uncertainty likelihood; the common form for every task kind, as in LibMTL and
torchjd; the paper's classification variant drops the 1/2 on the weight).

The s_t are ``nn.Parameter``s of the balancer, learned by the model's optimizer: the trainer
must add ``balancer.parameters()`` to it (and they are saved with the balancer's state_dict).
``last_weights`` are the effective weights 1/2 exp(-s_t). A task that is absent, or whose loss
is exactly 0 (the trainer's masked loss over a batch with no labels for it), contributes no
term: otherwise its 1/2 s_t penalty alone would push s_t down on every unlabeled batch.
"""

from __future__ import annotations

import torch
from torch import nn

from hydranet.balance.base import BALANCERS, LossWeighting
from hydranet.params import Finite


@BALANCERS.register("uw")
class UncertaintyWeighting(LossWeighting):
    """Learned task weights 1/2 exp(-s_t) with a 1/2 s_t penalty; s_t trained by the optimizer."""

    param_constraints = {"init_log_var": Finite}

    def __init__(self, tasks: list[str], init_log_var: float = 0.0):
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init_log_var)))

    def weights(self, losses, ctx):
        w = 0.5 * torch.exp(-self.log_vars)
        return {t: w[i] for i, t in enumerate(self.tasks)}

    def backward(self, losses, ctx):
        w = self.weights(losses, ctx)
        terms = [
            w[t] * losses[t] + 0.5 * self.log_vars[i]
            for i, t in enumerate(self.tasks)
            if ctx.present.get(t, True) and t in losses and bool(losses[t].detach() != 0)
        ]
        if terms:
            (sum(terms) * ctx.scale).backward()
        self.last_weights = {t: float(w[t].detach()) for t in self.tasks}
