"""PCGrad, gradient surgery (Yu et al., 2020, https://arxiv.org/abs/2001.06782), Algorithm 1.

For each task i, in a random order of the other tasks j: if g_i^PC . g_j < 0, project out the
conflict, g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j (always against the original g_j).
The update is d = sum_i g_i^PC (the paper's sum, on the same scale as equal weighting).

Every projection is a linear combination of the rows, so the work is done on K-vectors of
coefficients with the Gramian (g_i^PC = c_i^T G, g_i^PC . g_j = (G G^T c_i)_j), and
``last_weights`` are the exact coefficients sum_i c_i. Own code rather than torchjd's PCGrad:
torchjd draws the task order from the global RNG, while here one permutation per task and step
comes from a generator kept in the balancer's state, so a resumed run repeats the same orders.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hydranet.balance._rng import SeededStream
from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


def pcgrad_weights(gram: Tensor, orders: list[list[int]]) -> Tensor:
    """Coefficients of sum_i g_i^PC given the Gramian and, per task i, the order of the others."""
    k = gram.shape[0]
    total = gram.new_zeros(k)
    for i in range(k):
        c = gram.new_zeros(k)
        c[i] = 1.0
        for j in orders[i]:
            if j == i or gram[j, j] <= 0:
                continue
            dot = gram[j] @ c
            if dot < 0:
                c[j] -= dot / gram[j, j]
        total += c
    return total


@BALANCERS.register("pcgrad")
class PCGrad(GradientAggregation):
    """Project each task gradient off the others it conflicts with, in random order; sum."""

    param_constraints = {"seed": int}

    def __init__(self, tasks: list[str], rep_grad: bool = False, seed: int = 0):
        super().__init__(tasks, rep_grad=rep_grad)
        self.rng = SeededStream(seed)

    def aggregate(self, G: Tensor) -> Tensor:
        k = G.shape[0]
        orders = self.rng.draw(
            lambda g: [torch.randperm(k, generator=g).tolist() for _ in range(k)]
        )
        self._coef = pcgrad_weights(gramian(G).cpu(), orders)
        return combine(self._coef.to(G.device), G)
