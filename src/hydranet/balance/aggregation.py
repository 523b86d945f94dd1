"""Gradient aggregation: per-task gradients of the shared part combined into one update.

A method implements ``aggregate(G) -> g`` where row k of ``G`` (shape ``[K, P]``) is the
gradient of task k's loss and ``g`` (shape ``[P]``) the update direction; it also sets
``self._coef`` to the implied per-task coefficients (``g = coef @ G``) where those exist.

:meth:`GradientAggregation.backward` does the rest, the same way for every method:

1. tasks whose ``ctx.present`` is False (no labeled rows in the batch) are dropped: their row
   is left out of ``G``, they get weight 0, and their (possibly NaN) loss is never touched;
2. task-specific parameters (``ctx.task_params``) get the plain gradient of the sum of the
   present losses (a head is only reached by its own loss, so this is each head's own gradient);
3. the shared part, one of two formulations:

   * exact (default): rows of ``G`` are the gradients of all ``ctx.shared_params``, from one
     batched vector-Jacobian pass (see :func:`~hydranet.balance._jacobian.task_jacobian`);
     ``g`` is added to their ``.grad``;
   * ``rep_grad=True``: rows are the gradients w.r.t. the shared representation ``ctx.rep``,
     flattened over the batch (``G`` is ``[K, B*H]``), and ``g`` is backpropagated through the
     trunk with ``rep.backward(g, inputs=shared_params)``. One backward through the trunk
     instead of K; for methods defined on parameter gradients (all but MGDA-UB) this is an
     approximation (it assumes the trunk's Jacobian does not change which direction is
     best). It also assumes ``rep`` is the only path from the shared parameters to the losses.

4. fp16 loss scaling: losses are multiplied by ``ctx.scale`` before differentiating (so small
   gradients do not underflow), the rows are divided by ``ctx.scale`` before aggregating (the
   methods are not scale-equivariant: MGDA, Nash-MTL, CAGrad depend on the norms), and the
   result is multiplied back, so ``.grad`` holds scaled gradients as GradScaler expects. If a
   row is not finite (fp16 overflow), the plain sum is written instead so the non-finite values
   reach GradScaler, which then skips the step.
5. under DDP the trainer sets the base class's hooks: ``task_gradient_reducer`` turns the
   parameter rows into the global batch's before aggregating, ``task_gradient_gatherer`` puts
   every process's representation columns side by side (this process keeps its own slice of
   the direction). Every method then aggregates the same matrix on every rank.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from hydranet.balance._jacobian import add_flat_grad, task_jacobian
from hydranet.balance.base import BalanceContext, Balancer


class GradientAggregation(Balancer):
    family = "gradient"
    aggregates_gradients = True

    def __init__(self, tasks: list[str], rep_grad: bool = False):
        super().__init__(tasks)
        self.rep_grad = bool(rep_grad)
        # optional diagnostics.ConflictAccumulator, fed each step's G (the rows of whichever
        # formulation is in use: parameter or representation gradients)
        self.diagnostics = None
        self._coef: Tensor | None = None
        self._names: list[str] = []
        self._finite = True
        self._warned_no_rep = False
        self._jacobian_memo: dict[str, bool] = {}  # see _jacobian.task_jacobian

    def aggregate(self, G: Tensor) -> Tensor:
        """Combine the rows of ``G`` ``[K, P]`` into one direction ``[P]``; set ``self._coef``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def present_tasks(self, losses: dict[str, Tensor], ctx: BalanceContext) -> list[str]:
        return [
            t
            for t in self.tasks
            if ctx.present.get(t, True) and t in losses and losses[t].requires_grad
        ]

    def _set_last_weights(self, names: list[str], coef: Tensor | None) -> None:
        values = coef.detach().double().cpu().tolist() if coef is not None else [1.0] * len(names)
        got = dict(zip(names, values, strict=True))
        self.last_weights = {t: float(got.get(t, 0.0)) for t in self.tasks}

    def _aggregate_unscaled(self, J: Tensor, scale: float) -> Tensor:
        # the one place every method receives the task matrix (already made global by the
        # reduce hooks under DDP, see backward)
        if J.dtype in (torch.float16, torch.bfloat16):  # rep gradients under autocast
            J = J.float()
        G = J / scale if scale != 1.0 else J
        # a finite sum means every entry is finite (a NaN or an inf makes the sum NaN or inf),
        # and costs one pass instead of isfinite's four; only an overflowing sum of finite
        # entries needs the exact check
        self._finite = bool(torch.isfinite(G.sum())) or bool(torch.isfinite(G).all())
        if not self._finite:
            self._coef = torch.ones(G.shape[0], dtype=G.dtype, device=G.device)
            return J.sum(0)  # keeps the inf/NaN so GradScaler skips this step
        if self.diagnostics is not None:
            self.diagnostics.update(G.detach(), self._names)
        self._coef = None
        g = self.aggregate(G)
        return g * scale if scale != 1.0 else g

    def _aggregate_parameters(self, J: Tensor, scale: float) -> Tensor:
        if self.task_gradient_reducer is not None:
            J = self.task_gradient_reducer(J)
        return self._aggregate_unscaled(J, scale)

    def _aggregate_representation(self, J: Tensor, scale: float) -> Tensor:
        # J's columns are this process's rows of the representation: under DDP the direction
        # is aggregated from every process's columns and this process keeps its own slice
        if self.task_gradient_gatherer is None:
            return self._aggregate_unscaled(J, scale)
        full, offset = self.task_gradient_gatherer(J)
        return self._aggregate_unscaled(full, scale)[offset : offset + J.shape[1]]

    # ------------------------------------------------------------------ backward
    def backward(self, losses: dict[str, Tensor], ctx: BalanceContext) -> None:
        self.used_representation = False
        names = self.present_tasks(losses, ctx)
        self._names = names
        if not names:
            self._set_last_weights([], None)
            return
        scale = float(ctx.scale)
        scaled = [losses[t] * scale for t in names]
        task_params = [p for p in ctx.task_params if p.requires_grad]
        shared = [p for p in ctx.shared_params if p.requires_grad]
        if task_params:
            torch.autograd.backward(sum(scaled), inputs=task_params, retain_graph=bool(shared))
        if not shared:
            self._set_last_weights(names, None)
            return
        use_rep = self.rep_grad and ctx.rep is not None
        if self.rep_grad and ctx.rep is None and not self._warned_no_rep:
            warnings.warn(
                f"{type(self).__name__}: rep_grad=True but the model exposes no shared "
                "representation (ctx.rep is None); using exact parameter gradients instead",
                stacklevel=2,
            )
            self._warned_no_rep = True
        self.used_representation = use_rep
        if use_rep:
            rep = ctx.rep
            J = task_jacobian(scaled, [rep], retain_graph=True, memo=self._jacobian_memo)
            g = self._aggregate_representation(J, scale)
            rep.backward(g.view_as(rep).to(rep.dtype), inputs=shared)
        else:
            J = task_jacobian(scaled, shared, memo=self._jacobian_memo)
            g = self._aggregate_parameters(J, scale)
            add_flat_grad(shared, g)
        self._set_last_weights(names, self._coef)


def gramian(G: Tensor) -> Tensor:
    """``G @ G.T`` as float64: the product in G's dtype (P may be large), the K x K solve in float64."""
    return (G @ G.T).double()


def combine(coef: Tensor, G: Tensor) -> Tensor:
    """``coef @ G`` in G's dtype."""
    return coef.to(G.dtype) @ G
