"""Customized Gate Control (CGC): task-specific plus shared experts, one gate per task.

``h_t = sum_{e in E_t ∪ E_s} softmax(W_t x)_e f_e(x)``: task ``t``'s gate mixes
only its own experts ``E_t`` and the shared experts ``E_s``. Tang et al.,
"Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model
for Personalized Recommendations", RecSys 2020 (CGC is PLE's single level).

Task-specific and shared experts live in ONE :class:`~hydranet.models.blocks.BatchedMLP`
(one batched matmul); each gate's softmax over its selection is scattered into a
dense ``[T, B, E]`` weight tensor (zeros for other tasks' experts) so all the
mixing is one einsum.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hydranet.models.blocks import (
    BatchedLinear,
    BatchedMLP,
    gate_softmax,
    invalid_param,
    mix_experts,
)
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.params import NonNegativeInt, Widths

# CGC's parameters, which PLE's levels share
LEVEL_CONSTRAINTS = {
    "num_shared_experts": NonNegativeInt,
    "num_task_experts": NonNegativeInt,
    "expert_hidden": Widths,
}


def check_expert_counts(params: dict) -> list[tuple[str, str]]:
    """A gate needs at least one expert to mix (CGCLayer raises the same at build time)."""
    if params["num_shared_experts"] + params["num_task_experts"] < 1:
        return [("num_task_experts", "must be >= 1 when num_shared_experts is 0 (got 0)")]
    return []


class CGCLayer(nn.Module):
    """One extraction level: experts and gates; the building block of CGC and PLE.

    Experts are ordered task 0's ``num_task_experts``, task 1's, ..., then the
    ``num_shared_experts`` shared ones. Inputs are either one ``[B, D]`` tensor
    read by everything (first level) or per-path inputs ``[T+1, B, D]`` (task
    paths, then the shared path), each expert reading its own path.
    With ``shared_gate`` (PLE's non-final levels) a gate over ALL experts also
    produces the shared path of the next level, and the output is ``[T+1, B, H]``;
    otherwise it is ``[T, B, H]``.
    """

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_hidden: Sequence[int],
        activation: str,
        dropout: float,
        shared_gate: bool,
        architecture: str = "cgc",
    ):
        super().__init__()
        if num_shared_experts < 0:
            raise invalid_param(architecture, "num_shared_experts", ">= 0", num_shared_experts)
        if num_task_experts < 0:
            raise invalid_param(architecture, "num_task_experts", ">= 0", num_task_experts)
        if num_shared_experts + num_task_experts < 1:
            raise invalid_param(
                architecture, "num_task_experts", ">= 1 when num_shared_experts is 0", 0
            )
        if not expert_hidden:
            raise invalid_param(
                architecture, "expert_hidden", "a non-empty list of widths", expert_hidden
            )
        self.n_tasks = n_tasks
        self.num_experts = n_tasks * num_task_experts + num_shared_experts
        self.experts = BatchedMLP(self.num_experts, in_dim, expert_hidden, activation, dropout)
        self.out_dim = self.experts.out_dim
        n_select = num_task_experts + num_shared_experts
        self.task_gates = BatchedLinear(n_tasks, in_dim, n_select)
        self.shared_gate = nn.Linear(in_dim, self.num_experts) if shared_gate else None

        tasks = torch.arange(n_tasks)
        # Which input path each expert reads: its task's, or path T for shared experts.
        path = torch.cat(
            [tasks.repeat_interleave(num_task_experts), torch.full((num_shared_experts,), n_tasks)]
        )
        # Expert indices each task's gate selects: its own, then the shared ones.
        own = tasks[:, None] * num_task_experts + torch.arange(num_task_experts)
        shared = torch.arange(n_tasks * num_task_experts, self.num_experts).expand(n_tasks, -1)
        # Both are functions of the hyper-parameters, so not part of checkpoints.
        self.register_buffer("expert_path", path, persistent=False)
        self.register_buffer("task_select", torch.cat([own, shared], dim=1), persistent=False)

    def expert_outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` or ``[T+1, B, D]`` → all expert outputs ``[E, B, H]``."""
        if inputs.dim() == 3:
            inputs = inputs.index_select(0, self.expert_path)  # [E, B, D]
        return self.experts(inputs)

    def mix(
        self, task_in: torch.Tensor, experts: torch.Tensor, shared_in: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gate the experts: ``task_in`` is ``[B, D]`` or ``[T, B, D]``; ``shared_in`` ``[B, D]``."""
        selected = gate_softmax(self.task_gates(task_in))  # [T, B, n_select]
        t, b, s = selected.shape
        probs = selected.new_zeros(t, b, self.num_experts)
        probs = probs.scatter(2, self.task_select[:, None, :].expand(t, b, s), selected)
        if self.shared_gate is not None:
            probs = torch.cat([probs, gate_softmax(self.shared_gate(shared_in))[None]], dim=0)
        return mix_experts(experts, probs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        experts = self.expert_outputs(inputs)
        if inputs.dim() == 2:
            return self.mix(inputs, experts, inputs)
        return self.mix(inputs[: self.n_tasks], experts, inputs[self.n_tasks])


@TRUNKS.register("cgc")
class CGC(Trunk):
    """``rep`` is all expert outputs ``[E, B, H]`` (task-specific and shared); gates read ``x``.

    Shared parameters: the experts (one batched tensor; a task expert's slice
    gets gradient from its own task only). The gates are task-specific.
    """

    head_init_scale = 0.1  # gated: small heads keep the gates from collapsing early
    param_constraints = LEVEL_CONSTRAINTS

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
        num_shared_experts: int = 2,
        num_task_experts: int = 2,
        expert_hidden: Sequence[int] = (16,),
    ):
        super().__init__(input_dim, tasks)
        self.layer = CGCLayer(
            input_dim,
            len(self.tasks),
            num_shared_experts,
            num_task_experts,
            expert_hidden,
            activation,
            dropout,
            shared_gate=False,
        )
        self.out_dims = {t: self.layer.out_dim for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.expert_outputs(x)

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        return self.layer.mix(x, rep)  # [T, B, H]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.layer.experts.parameters()
