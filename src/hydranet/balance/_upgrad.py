"""UPGrad, unconflicting projection of gradients (Quinton & Rey, 2024, https://arxiv.org/abs/2406.16232).

Project every task gradient onto the dual cone of all of them, C = {x : x . g_j >= 0 for all j},
and average: d = (1/K) sum_i pi_C(g_i). Hence d . g_j >= 0 for every task (no task's loss is
increased to first order); a g_i that already agrees with every task is left as it is, so
without conflicts d is the plain mean.

By Proposition 1 of the paper, pi_C(G^T u) = G^T v with v = argmin_{v >= u} v^T (G G^T) v, so
each projection is a K-variable quadratic program on the Gramian.

Uses ``torchjd.aggregation.UPGradWeighting`` (the weighting with the mean preference vector)
with our own :class:`ActiveSetProjector` for the QP: torchjd's default projector needs the
``quadprog`` and ``qpsolvers`` packages (native extensions), while the QP has only K bound
constraints, which a primal active-set method solves exactly in a few K x K solves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hydranet.balance._simplex import box_qp
from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


def _active_set_projector():
    """torchjd is imported on first use: it pulls in scipy, seconds of start-up for every command."""
    from torchjd.linalg import DualConeProjector

    class ActiveSetProjector(DualConeProjector):
        """Solve min_v v^T G v s.t. v >= u for each u (rows of U), exactly, with no extra packages.

        The Gramian is normalised by its trace (the argmin does not change) and gets ``reg_eps``
        times the identity so linearly dependent gradients stay solvable; ``reg_eps`` is tiny
        (torchjd's quadprog default is 1e-4) so the result matches the projection definition.
        """

        def __init__(self, reg_eps: float = 1e-10, norm_eps: float = 1e-30):
            self.reg_eps = reg_eps
            self.norm_eps = norm_eps

        def __call__(self, U: Tensor, G: Tensor) -> Tensor:
            A = G.detach().double().cpu().numpy()
            trace = float(np.trace(A))
            if trace <= self.norm_eps:
                return torch.zeros_like(U)  # all gradients vanish: nothing to project
            A = A / trace + self.reg_eps * np.eye(A.shape[0])
            Uc = U.detach().double().cpu().numpy()
            flat = Uc.reshape(-1, Uc.shape[-1])
            W = np.stack([box_qp(A, u) for u in flat]).reshape(Uc.shape)
            return torch.from_numpy(W).to(device=U.device, dtype=U.dtype)

    return ActiveSetProjector()


@BALANCERS.register("upgrad")
class UPGrad(GradientAggregation):
    """Mean of the task gradients, each projected onto the dual cone of all of them."""

    def __init__(self, tasks: list[str], rep_grad: bool = False):
        super().__init__(tasks, rep_grad=rep_grad)
        from torchjd.aggregation import UPGradWeighting

        self._weighting = UPGradWeighting(projector=_active_set_projector())

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = self._weighting(gramian(G))
        return combine(self._coef, G)
