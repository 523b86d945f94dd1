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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from hydranet.params import DeclaredParams
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


class Balancer(nn.Module, DeclaredParams):
    """The base of every balancer; its class attributes declare what the trainer may rely on.

    Capabilities (the trainer, ``train/graph.py`` and ``train/distributed.py`` read these and
    nothing else; ``tests/test_balance_contract.py`` checks every registered method against
    them):

    * ``family``: ``"weighting"`` or ``"gradient"``, a label for logs and reports.
    * ``aggregates_gradients``: the balancer computes per-task gradients itself
      (``autograd.grad``) and writes the combined gradient of the shared parameters into
      ``.grad``; under DDP its step runs under ``no_sync`` (DDP's reducer never sees those
      gradients) and ``task_gradient_reducer`` makes the per-task matrix global. False: the
      model step is one ``backward()`` of a weighted sum, which DDP's reducer averages.
    * ``graph_safe``: ``backward`` may be recorded once into a CUDA graph and replayed every
      step: it never reads a loss, weight or gradient on the host (no ``float()``,
      ``.item()``, ``.tolist()``, ``bool()`` of a tensor) and the weights it applies do not
      change from step to step or epoch to epoch (a graph replays the captured values). Only
      loss weighting can be (the aggregation methods solve on the host).
    * ``shows_weights``: whether ``last_weights`` is worth a place in the progress line
      (False where they are always 1).
    * ``uses_representation`` (per instance): the trainer must pass the shared
      representation as ``ctx.rep`` (``rep_grad`` set, or always for methods defined on it,
      such as mgda_ub).
    * ``used_representation`` (per instance, after each ``backward``): the shared gradient
      was written by backpropagating an aggregated representation gradient, so under DDP
      each rank holds only its rows' part of it, which the trainer sums over ranks.

    Hooks the trainer sets (None: a single process):

    * ``task_gradient_reducer(J) -> J``: this process's per-task gradient matrix of the
      parameters ``[K, P]`` to the global batch's (under DDP: the average over ranks). The
      balancer applies it where it takes the matrix, before aggregating (or, gradnorm,
      before taking norms).
    * ``task_gradient_gatherer(J) -> (J_global, offset)``: the same for a representation
      gradient matrix ``[K, n]``, whose columns are this process's rows: every process's
      columns side by side (the global batch's matrix) and where this process's begin. The
      balancer aggregates the global matrix and keeps its own ``n`` columns.

    ``param_constraints`` declares the constructor parameters a Spec may set in
    ``balance.params`` and the values each accepts (see :mod:`hydranet.params`).
    """

    family: ClassVar[Literal["weighting", "gradient"]] = "weighting"
    aggregates_gradients: ClassVar[bool] = False
    graph_safe: ClassVar[bool] = False
    shows_weights: ClassVar[bool] = True
    task_gradient_reducer: Callable[[torch.Tensor], torch.Tensor] | None
    task_gradient_gatherer: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.last_weights: dict[str, float] = {t: 1.0 for t in self.tasks}
        self.rep_grad = False
        self.used_representation = False
        self.task_gradient_reducer = None
        self.task_gradient_gatherer = None

    @property
    def uses_representation(self) -> bool:
        return self.rep_grad

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
