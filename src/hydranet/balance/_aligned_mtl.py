"""Aligned-MTL (Senushkin et al., 2023, https://arxiv.org/abs/2305.19000), Algorithm 1.

Replace the gradient matrix G (K x P) by the closest matrix (orthogonal Procrustes) whose rows
are orthogonal with equal norms, scaled by the smallest singular value: with G G^T = V L V^T,
B = sqrt(l_min) V L^{-1/2} V^T, G_hat = B G = sqrt(l_min) U V_G^T (from the SVD G = U S V_G^T),
and d = G_hat^T 1 = sum_t (B 1)_t g_t. Eigenvalues below rank tolerance are dropped.

Uses ``torchjd.aggregation.AlignedMTLWeighting`` (adapted from the authors' code). torchjd
combines the aligned rows with the mean (pref vector 1/K); the official implementation sums
them (``grads.sum(-1)``), so the weights here are torchjd's times K. ``scale_mode``: "min" (the
paper), "median", or "rmse" (the mean eigenvalue).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


@BALANCERS.register("aligned_mtl")
class AlignedMTL(GradientAggregation):
    """Align the task gradients to an orthogonal, equal-norm set (Procrustes), then sum."""

    param_constraints = {"scale_mode": Literal["min", "median", "rmse"]}

    def __init__(
        self,
        tasks: list[str],
        rep_grad: bool = False,
        scale_mode: Literal["min", "median", "rmse"] = "min",
    ):
        super().__init__(tasks, rep_grad=rep_grad)
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(
                f"aligned_mtl scale_mode must be min, median or rmse; got {scale_mode!r}"
            )
        self.scale_mode = scale_mode
        from torchjd.aggregation import AlignedMTLWeighting  # lazy: torchjd imports scipy

        self._weighting = AlignedMTLWeighting(scale_mode=scale_mode)

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = self._weighting(gramian(G)) * G.shape[0]
        return combine(self._coef, G)
