"""The Balancer interface: how per-task losses become one parameter update.

Two families share one entry point, :meth:`Balancer.backward`, which must leave
the combined gradient in every parameter's ``.grad`` (the trainer then clips,
unscales and steps the optimizer):

* loss weighting: one scalar weight per task, one backward pass of
  ``sum_t w_t * L_t`` (subclass :class:`LossWeighting`, implement ``weights``);
* gradient aggregation: per-task gradients of the shared parameters (or of the
  shared representation when ``rep_grad``) combined into one direction.

Balancers are ``nn.Module`` so learned weights (uncertainty weighting) and
running state (DWA's loss history) travel with ``state_dict()`` and resume is
exact. ``last_weights`` holds the per-task weights (or aggregation
coefficients) of the last step, for logs and ``metrics.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hydranet.registry import Registry


@dataclass
class BalanceContext:
    """What a balancer may use besides the losses, filled by the trainer each step."""

    shared_params: list[nn.Parameter]
    task_params: list[nn.Parameter] = field(default_factory=list)
    rep: torch.Tensor | None = None  # shared representation (when the model exposes one)
    present: dict[str, bool] = field(default_factory=dict)  # task has labeled rows in this batch
    step: int = 0
    epoch: int = 0
    scale: float = 1.0  # loss scale under fp16 AMP; gradients seen by the balancer are unscaled


class Balancer(nn.Module):
    family: str = "weighting"

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.last_weights: dict[str, float] = {t: 1.0 for t in self.tasks}

    def backward(self, losses: dict[str, torch.Tensor], ctx: BalanceContext) -> None:
        raise NotImplementedError

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        """Called once per epoch with the mean training loss per task (DWA uses it)."""


class LossWeighting(Balancer):
    family = "weighting"

    def weights(
        self, losses: dict[str, torch.Tensor], ctx: BalanceContext
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    def backward(self, losses, ctx):
        w = self.weights(losses, ctx)
        total = sum(w[t] * losses[t] for t in self.tasks if ctx.present.get(t, True))
        if isinstance(total, torch.Tensor):
            (total * ctx.scale).backward()
        self.last_weights = {t: float(w[t]) for t in self.tasks}


BALANCERS: Registry[type[Balancer]] = Registry("balance method")
