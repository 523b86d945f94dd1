"""Multi-gate Mixture-of-Experts (MMoE).

``h_t = sum_e softmax(W_t x)_e f_e(x)``: E experts shared by all tasks, one
softmax gate per task. Ma et al., "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018.

All experts run as one :class:`~hydranet.models.blocks.BatchedMLP` and all gates
as one GEMM (``[B, D] @ [D, T*E]``); the weighted sums are one einsum.
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
from hydranet.params import PositiveInt, Widths


@TRUNKS.register("mmoe")
class MMoE(Trunk):
    """``rep`` is the expert outputs, ``[E, B, H]``; the gates read the trunk input ``x``.

    Shared parameters: the experts. The gates are task-specific; their path
    from ``x`` to the outputs bypasses ``rep`` (see ``MultiTaskModel.forward_with_rep``).
    """

    head_init_scale = 0.1  # gated: small heads keep the gates from collapsing early

    param_constraints = {"num_experts": PositiveInt, "expert_hidden": Widths}

    def __init__(
        self,
        input_dim: int,
        tasks: list[str],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        num_experts: int = 8,
        expert_hidden: Sequence[int] = (16,),
    ):
        super().__init__(input_dim, tasks)
        if num_experts < 1:
            raise invalid_param("mmoe", "num_experts", ">= 1", num_experts)
        if not expert_hidden:
            raise invalid_param(
                "mmoe", "expert_hidden", "a non-empty list of widths", expert_hidden
            )
        self.num_experts = num_experts
        self.experts = BatchedMLP(num_experts, input_dim, expert_hidden, activation, dropout)
        # One gate per task, [T, B, E] logits from a single GEMM on the shared input.
        self.gates = BatchedLinear(len(self.tasks), input_dim, num_experts)
        self.out_dims = {t: self.experts.out_dim for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x)  # [E, B, H]

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        probs = gate_softmax(self.gates(x))  # [T, B, E]
        return mix_experts(rep, probs)  # [T, B, H]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.experts.parameters()
