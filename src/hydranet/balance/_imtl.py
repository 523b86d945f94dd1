"""IMTL-G, impartial gradient weighting (Liu et al., 2021, https://openreview.net/forum?id=IMPnRXEWpvr).

Find d = sum_t a_t g_t with sum_t a_t = 1 whose projection on every unit task gradient is the
same: d . g_t / ||g_t|| = const. The paper's closed form, with u_t = g_t / ||g_t||,
D = [g_1 - g_t]_{t>1}, U = [u_1 - u_t]_{t>1}: a_{2:K} = g_1 U^T (D U^T)^{-1}, a_1 = 1 - sum a_{2:K}.
Equivalently G G^T a = const * (||g_t||)_t, so a = (G G^T)^+ n / sum((G G^T)^+ n) with n the norms.

Uses ``torchjd.aggregation.IMTLGWeighting`` (the Gramian form with a pseudo-inverse, which
also covers linearly dependent gradients; all-zero weights if the sum vanishes).
"""

from __future__ import annotations

from torch import Tensor

from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


@BALANCERS.register("imtl")
class IMTLG(GradientAggregation):
    """Aggregate with equal projections on every task's unit gradient (IMTL-G)."""

    def __init__(self, tasks: list[str], rep_grad: bool = False):
        super().__init__(tasks, rep_grad=rep_grad)
        from torchjd.aggregation import IMTLGWeighting  # lazy: torchjd imports scipy

        self._weighting = IMTLGWeighting()

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = self._weighting(gramian(G))
        return combine(self._coef, G)
