"""Single-task baseline: one independent network per task, nothing shared.

``h_t = f_t(x)``. The reference point of Δm% (every MTL paper compares against
one model per task); here the T networks are batched in one
:class:`~hydranet.models.blocks.BatchedMLP`, and only the feature encoder is
shared (so it is the one place task gradients meet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hydranet.models.blocks import BatchedMLP
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.params import PositiveInt


@TRUNKS.register("single_task")
class SingleTask(Trunk):
    """One ``MLP(hidden)`` per task; ``rep`` is the trunk input ``x``."""

    param_constraints = {"hidden": list[PositiveInt]}  # [] is the identity

    def __init__(
        self,
        input_dim: int,
        tasks: list[str],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        hidden: Sequence[int] = (64,),
    ):
        super().__init__(input_dim, tasks)
        self.bottoms = BatchedMLP(len(self.tasks), input_dim, hidden, activation, dropout)
        self.out_dims = {t: self.bottoms.out_dim for t in self.tasks}

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        # Read rep (== x), not x, so gradients w.r.t. rep see every task path.
        return self.bottoms(rep)  # [T, B, H]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())
