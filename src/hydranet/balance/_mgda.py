"""MGDA and MGDA-UB (Sener & Koltun, 2018, https://arxiv.org/abs/1810.04650).

d = sum_t a_t g_t with a = argmin_{a in simplex} ||sum_t a_t g_t||^2, the min-norm point of the
convex hull of the task gradients (zero exactly when the point is Pareto-stationary).

* K = 2: closed form, a_1 = clip(((g_2 - g_1) . g_2) / ||g_1 - g_2||^2, 0, 1), a_2 = 1 - a_1.
* K > 2, ``solver="active_set"`` (default): the QP min a^T (G G^T) a on the simplex solved
  exactly (primal active set on the trace-normalised Gramian, a 1e-12 ridge for rank-deficient
  G); same answer as the official code's projected-gradient ``find_min_norm_element``, to
  rounding instead of to a tolerance.
* K > 2, ``solver="frank_wolfe"``: the paper's Algorithm 2, from
  ``torchjd.aggregation.MGDAWeighting``; it stops when the step falls below ``epsilon``, and
  Frank-Wolfe converges slowly when the min-norm point lies inside a face (weights can be off
  by 1e-2 at epsilon = 1e-3), so it is an approximation.

``mgda`` is exact on the gradients of the shared parameters (or, with ``rep_grad=True``, on
the representation gradients). ``mgda_ub`` is the paper's own "upper bound" variant: the
min-norm problem is solved on the gradients w.r.t. the shared representation Z (one backward
through the trunk), which minimises an upper bound of the parameter-space objective. Without a
representation (``ctx.rep is None``) it falls back to parameter gradients with a warning.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hydranet.balance._simplex import simplex_qp
from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS
from hydranet.params import PositiveFloat, PositiveInt

Solver = Literal["active_set", "frank_wolfe"]


def min_norm_weights(
    gram: Tensor, solver: Solver = "active_set", epsilon: float = 1e-3, max_iters: int = 100
) -> Tensor:
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
    if solver == "frank_wolfe":
        from torchjd.aggregation import MGDAWeighting  # lazy: torchjd imports scipy

        return MGDAWeighting(epsilon=epsilon, max_iters=max_iters)(gram)
    A = gram.detach().double().cpu().numpy()
    trace = float(np.diagonal(A).mean())
    if trace <= 0:
        return gram.new_full((k,), 1.0 / k)
    A = A / trace + 1e-12 * np.eye(k)
    return torch.from_numpy(simplex_qp(A)).to(device=gram.device, dtype=gram.dtype)


@BALANCERS.register("mgda")
class MGDA(GradientAggregation):
    """Min-norm point of the task gradients (closed form for K=2, exact QP or Frank-Wolfe for K>2).

    ``epsilon`` and ``max_iters`` only apply to ``solver="frank_wolfe"``.
    """

    param_constraints = {
        "solver": Solver,
        "epsilon": PositiveFloat,
        "max_iters": PositiveInt,
    }

    def __init__(
        self,
        tasks: list[str],
        rep_grad: bool = False,
        solver: Solver = "active_set",
        epsilon: float = 1e-3,
        max_iters: int = 100,
    ):
        super().__init__(tasks, rep_grad=rep_grad)
        if solver not in ("active_set", "frank_wolfe"):
            raise ValueError(f"mgda solver must be 'active_set' or 'frank_wolfe'; got {solver!r}")
        if epsilon <= 0 or max_iters < 1:
            raise ValueError("mgda needs epsilon > 0 and max_iters >= 1")
        self.solver = solver
        self.epsilon = float(epsilon)
        self.max_iters = int(max_iters)

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = min_norm_weights(gramian(G), self.solver, self.epsilon, self.max_iters)
        return combine(self._coef, G)


@BALANCERS.register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients w.r.t. the shared representation (the paper's upper bound).

    Takes no ``rep_grad``: it is always on (that is the method).
    """

    def __init__(
        self,
        tasks: list[str],
        solver: Solver = "active_set",
        epsilon: float = 1e-3,
        max_iters: int = 100,
    ):
        super().__init__(tasks, rep_grad=True, solver=solver, epsilon=epsilon, max_iters=max_iters)
