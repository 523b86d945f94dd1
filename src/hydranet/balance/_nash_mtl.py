"""Nash-MTL, multi-task learning as a bargaining game (Navon et al., 2022, https://arxiv.org/abs/2202.01017).

d = sum_t a_t g_t where a > 0 solves (G G^T) a = 1 / a (elementwise), i.e. every task's
utility g_t . d equals 1 / a_t: the Nash bargaining solution. Scaling one task's gradient by s
scales its a_t by 1/s, so the update is invariant to per-task loss scales; ||d||^2 = K.

Own solver: a is the unique minimiser of the strictly convex f(a) = 1/2 a^T (G G^T) a - sum log a,
whose gradient is (G G^T) a - 1/a. We run damped Newton (Hessian G G^T + diag(1/a^2), backtracking
that keeps a > 0) on the trace-normalised Gramian, then rescale; it meets the optimality
condition to ~1e-10 in a handful of K x K solves. The paper's code instead runs 20 steps of a
concave-convex procedure with cvxpy (as does torchjd's NashMTL), which needs cvxpy and ECOS
(heavy native dependencies) and stops at an approximate solution. Differences from the
official code: no gradient-norm clipping (``max_norm``; use the trainer's ``grad_clip``) and
the condition is solved on the raw Gramian as in the paper (the code divides G G^T by its
norm, which rescales d by sqrt(||G G^T||)). A tiny ridge keeps a finite when the gradients are
exactly conflicting (0 in their convex hull), where the exact a does not exist.

``update_weights_every=n`` reuses a from the last solve for n - 1 steps (one ordinary backward of
sum_t a_t L_t, no Jacobian), as in the paper's faster variant. Under distributed training the
reuse is switched off (with a warning): the trainer averages the task matrix G across ranks
inside the aggregation, and a plain backward would bypass that and let the ranks drift apart.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from hydranet.balance.aggregation import GradientAggregation, combine, gramian
from hydranet.balance.base import BALANCERS
from hydranet.params import PositiveInt


def nash_weights(
    gram: Tensor, ridge: float = 1e-10, max_iters: int = 100, tol: float = 1e-12
) -> Tensor:
    """Solve gram @ a = 1 / a for a > 0 (damped Newton on 1/2 a^T A a - sum log a)."""
    gram = gram.detach().double().cpu()
    k = gram.shape[0]
    scale = float(gram.diagonal().mean())
    if scale <= 0:
        return torch.zeros(k, dtype=torch.float64)
    A = gram / scale + ridge * torch.eye(k, dtype=torch.float64)
    a = A.diagonal().clamp_min(1e-12).rsqrt()  # exact when the gradients are orthogonal

    def f(x: Tensor) -> float:
        return float(0.5 * x @ A @ x - x.log().sum())

    fa = f(a)
    for _ in range(max_iters):
        grad = A @ a - 1 / a
        H = A + torch.diag(1 / a**2)
        step = -torch.linalg.solve(H, grad)
        decrement = float(-(grad @ step))
        if decrement <= tol:
            break
        t = 1.0
        while bool((a + t * step <= 0).any()):
            t *= 0.5
        while True:
            cand = a + t * step
            fc = f(cand)
            if fc <= fa - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        a, fa = cand, fc
    # A = gram / scale: gram (a / sqrt(scale)) = 1 / (a / sqrt(scale))
    return a / scale**0.5


@BALANCERS.register("nash_mtl")
class NashMTL(GradientAggregation):
    """Bargaining solution: task weights a with (G G^T) a = 1/a."""

    param_constraints = {"update_weights_every": PositiveInt}

    def __init__(self, tasks: list[str], rep_grad: bool = False, update_weights_every: int = 1):
        super().__init__(tasks, rep_grad=rep_grad)
        if update_weights_every < 1:
            raise ValueError(
                f"nash_mtl update_weights_every must be >= 1; got {update_weights_every}"
            )
        self.update_weights_every = int(update_weights_every)
        self.register_buffer("alpha", torch.zeros(len(self.tasks), dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self._warned_dist = False

    def aggregate(self, G: Tensor) -> Tensor:
        self._coef = nash_weights(gramian(G)).to(G.device)
        return combine(self._coef, G)

    def backward(self, losses, ctx):
        names = self.present_tasks(losses, ctx)
        idx = [self.tasks.index(t) for t in names]
        reuse = (
            bool(names)
            and self.update_weights_every > 1
            and int(self.calls) % self.update_weights_every != 0
            and bool((self.alpha[idx] > 0).all())
        )
        self.calls += 1
        if reuse and self.task_gradient_reducer is not None:  # set under DDP
            if not self._warned_dist:
                warnings.warn(
                    "nash_mtl: update_weights_every > 1 is ignored under distributed training "
                    "(the weights are solved every step)",
                    stacklevel=2,
                )
                self._warned_dist = True
            reuse = False
        if not reuse:
            super().backward(losses, ctx)
            if self._coef is not None and names and self._finite:
                self.alpha.zero_()
                self.alpha[idx] = self._coef.detach().to(self.alpha)
            return
        coef = self.alpha[idx]
        total = sum(float(c) * losses[t] for c, t in zip(coef, names, strict=True))
        (total * ctx.scale).backward()
        self._set_last_weights(names, coef)
