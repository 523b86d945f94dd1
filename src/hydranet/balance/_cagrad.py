"""CAGrad, conflict-averse gradient descent (Liu et al., 2021, https://arxiv.org/abs/2110.14048).

max_d min_i g_i . d subject to ||d - g_0|| <= c ||g_0||, g_0 = mean_i g_i. Its dual, solved on
the K-simplex, is w* = argmin_w g_w . g_0 + c ||g_0|| ||g_w|| with g_w = sum_i w_i g_i, and
d = g_0 + (c ||g_0|| / ||g_w*||) g_w*, divided by (1 + c^2) as in the official code
(``rescale=1``; 0 = no rescaling, 2 = divide by 1 + c). At c = 0 this is exactly the mean.

Own code: torchjd's CAGrad needs cvxpy (a heavy native dependency) and leaves out the
rescaling. The dual is a convex problem in K variables, solved here by projected gradient
descent with backtracking on the simplex (to ~1e-10 in w on well-conditioned Gramians; the
official implementation uses scipy's SLSQP). If g_w* vanishes (0 is in the convex hull of the
gradients, a Pareto-stationary point) the direction of g_w* is undefined and d = g_0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hydranet.balance._simplex import minimize_on_simplex
from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS


def cagrad_weights(gram: Tensor, c: float, rescale: int = 1) -> Tensor:
    k = gram.shape[0]
    b = np.full(k, 1.0 / k)
    A = gram.detach().double().cpu().numpy()
    norm = float(np.diagonal(A).mean())
    if norm <= 0 or c == 0:
        coef = b
    else:
        A = A / norm  # the argmin is invariant to scaling the Gramian
        Ab = A @ b
        sqrt_phi = c * math.sqrt(max(float(b @ Ab), 0.0))
        delta = 1e-20

        def f(w: np.ndarray) -> float:
            return float(w @ Ab + sqrt_phi * math.sqrt(w @ A @ w + delta))

        def grad(w: np.ndarray) -> np.ndarray:
            Aw = A @ w
            return Ab + sqrt_phi * Aw / math.sqrt(w @ Aw + delta)

        w = minimize_on_simplex(f, grad, b.copy())
        gw_norm = math.sqrt(max(float(w @ A @ w), 0.0))
        coef = b + (sqrt_phi / gw_norm) * w if gw_norm > 1e-9 else b
    if rescale == 1:
        coef = coef / (1 + c**2)
    elif rescale == 2:
        coef = coef / (1 + c)
    return torch.from_numpy(coef)


@BALANCERS.register("cagrad")
class CAGrad(GradientAggregation):
    """Mean gradient moved within a ball of radius c||g_0|| to raise the worst task's improvement."""

    def __init__(self, tasks: list[str], rep_grad: bool = False, c: float = 0.5, rescale: int = 1):
        super().__init__(tasks, rep_grad=rep_grad)
        if c < 0:
            raise ValueError(f"cagrad needs c >= 0; got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"cagrad rescale must be 0, 1 or 2; got {rescale}")
        self.c = float(c)
        self.rescale = int(rescale)

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = cagrad_weights(gramian(G), self.c, self.rescale).to(G.device)
        return combine(self._coef, G)
