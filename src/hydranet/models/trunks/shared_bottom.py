"""Shared-bottom (hard parameter sharing): one network for all tasks, then the towers.

``h = f(x)``, ``y_t = tower_t(h)``. Caruana, "Multitask Learning", Machine
Learning 28 (1997).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hydranet.models.blocks import MLP
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.params import PositiveInt


@TRUNKS.register("shared_bottom")
class SharedBottom(Trunk):
    """One ``MLP(hidden)`` shared by every task; ``rep`` is its output ``[B, H]``."""

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
        self.bottom = MLP(input_dim, hidden, activation, dropout)
        self.out_dims = {t: self.bottom.out_dim for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottom(x)

    def task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: rep for t in self.tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.bottom.parameters()
