"""One-gate Mixture-of-Experts (OMoE): MMoE with a single gate shared by every task.

``h = sum_e softmax(W x)_e f_e(x)``, ``y_t = tower_t(h)``: the same E experts as
MMoE, but one softmax gate for all tasks, so every task sees the same mixture.
Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018 (the OMoE ablation of section 4). The paper's
point is the comparison: the gap between MMoE and OMoE grows as the tasks'
correlation falls.

Built from :class:`~hydranet.models.trunks.mmoe.MMoE` with one gate; the
experts run batched, the gate is one GEMM and the mixture one einsum.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hydranet.models.blocks import BatchedLinear, gate_softmax, mix_experts
from hydranet.models.trunks.base import TRUNKS
from hydranet.models.trunks.mmoe import MMoE


@TRUNKS.register("omoe")
class OMoE(MMoE):
    """``rep`` is the gated mixture ``[B, H]``, shared by every task (as in shared-bottom).

    Experts and the gate are all shared parameters: every task's loss reaches
    both, and both are computed before ``rep``, so representation gradients are exact.
    """

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
        super().__init__(
            input_dim,
            tasks,
            activation=activation,
            dropout=dropout,
            num_experts=num_experts,
            expert_hidden=expert_hidden,
        )
        self.gates = BatchedLinear(1, input_dim, num_experts)  # the one gate

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        probs = gate_softmax(self.gates(x))  # [1, B, E]
        return mix_experts(self.experts(x), probs)[0]  # [B, H]

    def task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: rep for t in self.tasks}  # one tensor: the towers run as one GEMM

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()
