"""Gradient-conflict diagnostics: pairwise cosine similarities of the task gradients.

``pairwise_cosine(G)`` gives the K x K cosine matrix of the rows of G; a pair conflicts when its
cosine is negative. :class:`ConflictAccumulator` collects them step by step (on the device, no
host sync per step) and returns per-epoch means, ``{"cos/a~b": mean, "conflict_frac": ...}``,
``conflict_frac`` being the fraction of steps in which at least one pair conflicted.

:class:`ConflictTracker` (what the trainer uses) computes G itself from the losses with
:func:`task_gradients` (one extra batched backward per step). Alternatively, a
gradient-aggregation balancer feeds an accumulator the G it already computed when
``balancer.diagnostics`` is set to one (no extra cost).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hydranet.balance._jacobian import task_jacobian


def pairwise_cosine(G: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of every pair of rows of ``G`` [K, P]; a zero row has cosine 0."""
    Gf = G.detach().float()
    unit = Gf / Gf.norm(dim=1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def has_conflict(cos: Tensor) -> bool:
    """True if some pair of distinct tasks has a negative cosine."""
    k = cos.shape[0]
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    return bool((cos[off] < 0).any())


def task_gradients(
    losses: dict[str, Tensor],
    params: list[Tensor],
    tasks: list[str] | None = None,
    memo: dict[str, bool] | None = None,
) -> tuple[list[str], Tensor]:
    """(names, G): the gradients of each loss w.r.t. ``params`` as rows; keeps the graph."""
    names = [t for t in (tasks or list(losses)) if t in losses and losses[t].requires_grad]
    G = task_jacobian([losses[t] for t in names], list(params), retain_graph=True, memo=memo)
    return names, G


class ConflictAccumulator:
    """Per-epoch means of pairwise task-gradient cosines and the fraction of conflicting steps."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.reset()

    def reset(self) -> None:
        k = len(self.tasks)
        self._sum = torch.zeros(k, k, dtype=torch.float64)
        self._count = torch.zeros(k, k, dtype=torch.float64)
        self._conflicts = torch.zeros((), dtype=torch.float64)
        self._steps = 0

    def update(self, G: Tensor, names: list[str] | None = None) -> None:
        """Add one step's gradients; row i of ``G`` belongs to ``names[i]`` (default: all tasks)."""
        names = list(names) if names is not None else self.tasks
        idx = torch.tensor([self.tasks.index(t) for t in names], dtype=torch.long)
        cos = pairwise_cosine(G).double()
        if self._sum.device != cos.device:
            self._sum, self._count = self._sum.to(cos.device), self._count.to(cos.device)
            self._conflicts = self._conflicts.to(cos.device)
        idx = idx.to(cos.device)
        ii, jj = torch.meshgrid(idx, idx, indexing="ij")
        self._sum.index_put_((ii, jj), cos, accumulate=True)
        self._count.index_put_((ii, jj), torch.ones_like(cos), accumulate=True)
        off = ~torch.eye(len(names), dtype=torch.bool, device=cos.device)
        self._conflicts += (cos[off] < 0).any().double()
        self._steps += 1

    def compute(self) -> dict[str, float]:
        """Means over the steps since the last reset; pairs never seen together are left out."""
        out: dict[str, float] = {}
        s, c = self._sum.cpu(), self._count.cpu()
        for i, a in enumerate(self.tasks):
            for j in range(i + 1, len(self.tasks)):
                if c[i, j] > 0:
                    out[f"cos/{a}~{self.tasks[j]}"] = float(s[i, j] / c[i, j])
        out["conflict_frac"] = float(self._conflicts) / self._steps if self._steps else 0.0
        return out

    def state_dict(self) -> dict:
        """The partial epoch's sums (for checkpoints: a run resumed mid-epoch keeps them)."""
        return {
            "tasks": list(self.tasks),
            "sum": self._sum.cpu(),
            "count": self._count.cpu(),
            "conflicts": self._conflicts.cpu(),
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["tasks"]) != self.tasks:
            raise ValueError(
                f"diagnostics state is for tasks {list(state['tasks'])}, not {self.tasks}"
            )
        device = self._sum.device
        self._sum, self._count = (
            state["sum"].to(device, torch.float64),
            state["count"].to(device, torch.float64),
        )
        self._conflicts = state["conflicts"].to(device, torch.float64).reshape(())
        self._steps = int(state["steps"])

    def epoch_means(self) -> dict[str, float]:
        """``compute()`` then ``reset()``: call once at the end of each epoch."""
        out = self.compute()
        self.reset()
        return out


class ConflictTracker(ConflictAccumulator):
    """What the trainer uses under ``--diagnose``: computes G itself from the losses each step.

    ``observe`` differentiates each present task's loss w.r.t. the shared parameters (one
    batched backward that keeps the graph, so the balancer's backward can follow); steps with
    fewer than two present tasks are skipped. ``epoch_summary`` returns the epoch's means and
    starts a new epoch.
    """

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)
        self._jacobian_memo: dict[str, bool] = {}  # see _jacobian.task_jacobian

    def observe(
        self,
        losses: dict[str, Tensor],
        params: list[Tensor],
        present: dict[str, bool] | None = None,
    ) -> None:
        present = present or {}
        names = [t for t in self.tasks if present.get(t, True)]
        names = [t for t in names if t in losses and losses[t].requires_grad]
        if len(names) < 2:
            return
        names, G = task_gradients(losses, params, names, memo=self._jacobian_memo)
        self.update(G, names)

    def epoch_summary(self) -> dict[str, float]:
        return self.epoch_means()
