"""GradNorm (Chen et al., 2018, https://arxiv.org/abs/1711.02257), alpha = 1.5.

The model step uses L = sum_t w_t L_t. The weights are learned to equalise training rates:
with G_t = ||grad_W (w_t L_t)|| = w_t ||grad_W L_t|| on the last shared layer W, mean norm
G_bar, inverse training rate r_t = (L_t / L_t(0)) / mean_i (L_i / L_i(0)), the weights descend
L_grad = sum_t |G_t - G_bar r_t^alpha| with the target G_bar r_t^alpha held constant; so
dL_grad/dw_t = sign(G_t - target_t) ||grad_W L_t||. After each update w is clamped positive
and renormalised to sum to K.

The weights are a buffer updated here by plain gradient descent with step ``lr`` (not by the
model's optimizer: nothing to add to it). W is the last shared parameter with at least two
dimensions (the last shared weight matrix; ``ctx.shared_params`` in module order), as in the
paper; with ``rep_grad=True`` and a representation available, the norms are taken w.r.t.
``ctx.rep`` instead (cheaper; a common approximation). The K norms come from one batched
vector-Jacobian pass over W only. L_t(0) is the first loss seen for each task.
"""

from __future__ import annotations

import math

import torch

from hydranet.balance._jacobian import task_jacobian
from hydranet.balance.base import BALANCERS, LossWeighting
from hydranet.params import NonNegativeFloat, PositiveFloat


@BALANCERS.register("gradnorm")
class GradNorm(LossWeighting):
    """Weights that equalise gradient norms at the last shared layer, scaled by training rate."""

    param_constraints = {
        "alpha": NonNegativeFloat,
        "lr": PositiveFloat,
        "min_weight": PositiveFloat,
    }

    def __init__(
        self,
        tasks: list[str],
        rep_grad: bool = False,
        alpha: float = 1.5,
        lr: float = 0.025,
        min_weight: float = 1e-3,
    ):
        super().__init__(tasks)
        self.rep_grad = bool(rep_grad)
        self.alpha, self.lr, self.min_weight = float(alpha), float(lr), float(min_weight)
        self._jacobian_memo: dict[str, bool] = {}  # see _jacobian.task_jacobian
        k = len(self.tasks)
        self.register_buffer("task_weights", torch.ones(k, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.full((k,), math.nan, dtype=torch.float64))

    def weights(self, losses, ctx):
        return dict(zip(self.tasks, self.task_weights.tolist(), strict=True))

    def backward(self, losses, ctx):
        names = [
            t
            for t in self.tasks
            if ctx.present.get(t, True) and t in losses and losses[t].requires_grad
        ]
        # a loss of exactly 0 (masked loss over no labels) has no rate to compare: leave it out
        names = [t for t in names if float(losses[t].detach()) > 0]
        idx = [self.tasks.index(t) for t in names]
        norms = self._norms([losses[t] for t in names], ctx) if len(names) > 1 else None
        super().backward(losses, ctx)  # model step with the current weights
        if norms is None:
            return
        with torch.no_grad():
            L = torch.stack([losses[t].detach().double() for t in names]).to(
                self.task_weights.device
            )
            init = self.initial_losses[idx]
            init = torch.where(torch.isnan(init), L, init)
            self.initial_losses[idx] = init
            w = self.task_weights[idx]
            norms = norms.to(w)
            g = w * norms
            ratio = L / init.clamp_min(1e-12)
            target = g.mean() * (ratio / ratio.mean()).pow(self.alpha)
            grad = torch.sign(g - target) * norms
            self.task_weights[idx] = (w - self.lr * grad).clamp_min(self.min_weight)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())

    def _norms(self, task_losses, ctx) -> torch.Tensor:
        if self.rep_grad and ctx.rep is not None:
            target = ctx.rep
        else:
            shared = [p for p in ctx.shared_params if p.requires_grad]
            if not shared:
                return None
            target = next((p for p in reversed(shared) if p.ndim >= 2), shared[-1])
        scaled = [loss * ctx.scale for loss in task_losses]
        J = task_jacobian(scaled, [target], retain_graph=True, memo=self._jacobian_memo)
        if self.task_gradient_reducer is not None and target is not ctx.rep:
            # under DDP: the global batch's gradients of W, so every rank computes the same
            # norms and weights (representation norms are refused under DDP: distributed.py)
            J = self.task_gradient_reducer(J.detach())
        return J.norm(dim=1).detach() / ctx.scale
