"""Gated fusion: each task weighs the modality vectors with its own softmax gate.

``p_g = act(P_g v_g)`` projects group ``g``'s vector to a common width ``d`` (the modality
vectors), and task ``t``'s trunk input is ``[G w_t1 p_1, ..., G w_tG p_G]`` with ``w_t =
softmax(W_t [LN(p_1) .. LN(p_G)])`` (``[T, B, G*d]``): each group scaled by the task's own
gate, the groups kept side by side (``G`` times the weight, so the uniform gate the gates
start from passes every group through unscaled, as concatenation does). The gates are MMoE's
(Ma et al., KDD 2018) with the modalities as the experts: one softmax gate per task, all
``T`` gates as one GEMM. Any trunk takes the per-task inputs: the model runs it once on the
``T*B`` rows and keeps, for each task, its output on that task's rows (see
``MultiTaskModel.forward_with_rep``), so the trunk costs ``T`` times its concat cost (the
encoders, usually the expensive part, run once).

Two earlier versions, measured on the emoji benchmark (frozen MobileNetV2 + MiniLM, 3 seeds):
the gates' mix ``sum_g w_tg p_g`` as the trunk input squeezed every group into one ``d``-wide
vector (test subcategory accuracy 0.41-0.46 against 0.62 concatenated), and gates reading
the raw vectors let MobileNetV2's 1280 unnormalised features drown the other groups, so they
went all or nothing from the first steps (0.405).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from hydranet.models.blocks import BatchedLinear, activation, gate_softmax
from hydranet.models.encoders.base import FUSIONS, Fusion
from hydranet.params import PositiveInt

__all__ = ["GatedFusion"]


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Per-group projections to ``dim`` (shared) and one gate per task (task parameters).

    The gates read the projected groups, each layer-normalised, and start at zero, so every
    task starts from the groups as they are. With a single group the gate is constant 1 and
    every task's input is that group's projection (allowed, and harmless: the gate's
    gradient is then zero).
    """

    per_task = True

    param_constraints = {"dim": PositiveInt, "activation": Literal["relu", "gelu", "silu", "tanh"]}

    def __init__(
        self,
        dims: dict[str, int],
        tasks: Sequence[str] = (),
        *,
        dim: int = 32,
        activation: str = "relu",
    ):
        super().__init__()
        self.groups = list(dims)
        self.tasks = list(tasks)
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(dims[g], dim), _activation(activation)) for g in self.groups
        )
        self.gate_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in self.groups)
        # one GEMM for all tasks' gate logits: [B, G*dim] -> [T, B, G]
        self.gates = BatchedLinear(len(self.tasks), dim * len(self.groups), len(self.groups))
        self.out_dim = dim * len(self.groups)
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        self.gates.weight.zero_()
        self.gates.bias.zero_()

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Each task's gated groups side by side, ``[T, B, G * dim]`` in task order."""
        projected = [p(v) for p, v in zip(self.projections, parts, strict=True)]
        weights = self._gates(projected) * len(projected)  # [T, B, G]; uniform = 1 each
        stacked = torch.stack(projected, dim=1)  # [B, G, d]
        gated = weights.unsqueeze(-1) * stacked.unsqueeze(0)  # [T, B, G, d]
        return gated.flatten(2)

    def _gates(self, projected: list[torch.Tensor]) -> torch.Tensor:
        normed = [n(p) for n, p in zip(self.gate_norms, projected, strict=True)]
        return gate_softmax(self.gates(_cat(normed)))

    def gate_weights(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Each task's weights over the groups, ``[T, B, G]`` (rows sum to 1)."""
        return self._gates([p(v) for p, v in zip(self.projections, parts, strict=True)])

    def task_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.gates.parameters()
        yield from self.gate_norms.parameters()


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _activation(name: str) -> nn.Module:
    # the constructor's ``activation`` argument shadows blocks.activation
    return activation(name)
