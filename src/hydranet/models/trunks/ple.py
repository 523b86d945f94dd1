"""Progressive Layered Extraction (PLE): stacked CGC levels with a shared path between them.

Level ``k`` (input paths ``h^{k-1}_1..T`` and ``h^{k-1}_s``):
``h^k_t = sum_{e in E_t ∪ E_s} g^k_t(h^{k-1}_t)_e f_e``, and on non-final levels
also ``h^k_s = sum_{all e} g^k_s(h^{k-1}_s)_e f_e``. Tang et al., "Progressive
Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020.

Each level's experts are one batched matmul (per-path inputs via ``baddbmm``);
the Python loop runs over the few levels only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hydranet.models.blocks import invalid_param
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.models.trunks.cgc import LEVEL_CONSTRAINTS, CGCLayer, check_expert_counts
from hydranet.params import PositiveInt


@TRUNKS.register("ple")
class PLE(Trunk):
    """``rep``: everything the final level's gates and sums read, so all shared paths cross it.

    With one level ``rep`` is the expert outputs ``[E, B, H]`` and the gates read
    ``x`` (as in CGC). With more, ``rep = cat([h_1..h_T, f_1..f_E])``, shape
    ``[T+E, B, H]``: the final level's task inputs (the gates' inputs) followed by
    its expert outputs. Shared parameters: everything computed before ``rep``
    (all non-final levels and the final level's experts); the final task gates
    are task-specific.
    """

    head_init_scale = 0.1  # gated: small heads keep the gates from collapsing early
    param_constraints = {"num_levels": PositiveInt, **LEVEL_CONSTRAINTS}

    @classmethod
    def check_params(cls, params):
        return check_expert_counts(params)

    def __init__(
        self,
        input_dim: int,
        tasks: list[str],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        num_levels: int = 2,
        num_shared_experts: int = 2,
        num_task_experts: int = 2,
        expert_hidden: Sequence[int] = (16,),
    ):
        super().__init__(input_dim, tasks)
        if num_levels < 1:
            raise invalid_param("ple", "num_levels", ">= 1", num_levels)
        levels = []
        dim = input_dim
        for k in range(num_levels):
            level = CGCLayer(
                dim,
                len(self.tasks),
                num_shared_experts,
                num_task_experts,
                expert_hidden,
                activation,
                dropout,
                shared_gate=k < num_levels - 1,
                architecture="ple",
            )
            levels.append(level)
            dim = level.out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dims = {t: dim for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for level in self.levels[:-1]:
            h = level(h)  # [T+1, B, H]: task paths, then the shared path
        experts = self.levels[-1].expert_outputs(h)  # [E, B, H]
        if len(self.levels) == 1:
            return experts
        return torch.cat([h[: len(self.tasks)], experts], dim=0)

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        n = len(self.tasks)
        last = self.levels[-1]
        return last.mix(x, rep) if len(self.levels) == 1 else last.mix(rep[:n], rep[n:])

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        for level in self.levels[:-1]:
            yield from level.parameters()
        yield from self.levels[-1].experts.parameters()
