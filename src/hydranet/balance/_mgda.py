"""MGDA and MGDA-UB (Sener & Koltun, 2018, https://arxiv.org/abs/1810.04650).

d = sum_t a_t g_t with a = argmin_{a in simplex} ||sum_t a_t g_t||^2, the min-norm point of the
convex hull of the task gradients (zero exactly when the point is Pareto-stationary).

* K = 2: closed form, a_1 = clip(((g_2 - g_1) . g_2) / ||g_1 - g_2||^2, 0, 1), a_2 = 1 - a_1.
* K > 2: Frank-Wolfe (the paper's Algorithm 2) from ``torchjd.aggregation.MGDAWeighting`` run
  on the Gramian G G^T; it stops when the step size falls below ``epsilon`` (so the result is
  an approximation of the min-norm point to about that tolerance).

``mgda`` is exact on the gradients of the shared parameters (or, with ``rep_grad=True``, on
the representation gradients). ``mgda_ub`` is the paper's own "upper bound" variant: the
min-norm problem is solved on the gradients w.r.t. the shared representation Z (one backward
through the trunk), which minimises an upper bound of the parameter-space objective. Without a
representation (``ctx.rep is None``) it falls back to parameter gradients with a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchjd.aggregation import MGDAWeighting

from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


def min_norm_weights(gram: Tensor, epsilon: float = 1e-3, max_iters: int = 100) -> Tensor:
    """Simplex weights of the min-norm point, from the Gramian ``[K, K]``."""
    k = gram.shape[0]
    if k == 1:
        return gram.new_ones(1)
    if k == 2:
        denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        if float(denom) <= 1e-12 * float(gram[0, 0] + gram[1, 1]):  # g_1 == g_2: any point will do
            return gram.new_full((2,), 0.5)
        a1 = ((gram[1, 1] - gram[0, 1]) / denom).clamp(0.0, 1.0)
        return torch.stack([a1, 1 - a1])
    return MGDAWeighting(epsilon=epsilon, max_iters=max_iters)(gram)


@BALANCERS.register("mgda")
class MGDA(GradientAggregation):
    """Min-norm point of the task gradients (exact for K=2, Frank-Wolfe via torchjd for K>2)."""

    def __init__(
        self,
        tasks: list[str],
        rep_grad: bool = False,
        epsilon: float = 1e-3,
        max_iters: int = 100,
    ):
        super().__init__(tasks, rep_grad=rep_grad)
        if epsilon <= 0 or max_iters < 1:
            raise ValueError("mgda needs epsilon > 0 and max_iters >= 1")
        self.epsilon = float(epsilon)
        self.max_iters = int(max_iters)

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = min_norm_weights(gramian(G), self.epsilon, self.max_iters)
        return combine(self._coef, G)


@BALANCERS.register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients w.r.t. the shared representation (the paper's upper bound).

    Takes no ``rep_grad``: it is always on (that is the method).
    """

    def __init__(self, tasks: list[str], epsilon: float = 1e-3, max_iters: int = 100):
        super().__init__(tasks, rep_grad=True, epsilon=epsilon, max_iters=max_iters)
