"""Cross-stitch networks: one column per task, linearly mixed after every layer.

``h^l_t = sum_s alpha^l_{ts} f^l_s(h^{l-1}_s)`` with a learned ``T×T`` matrix
``alpha^l`` per layer (initialised to 0.9 on the diagonal and ``0.1/(T-1)`` off
it). Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016.

The T columns of a layer are one batched matmul; the loop runs over layers only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from hydranet.models.blocks import BatchedLinear, invalid_param
from hydranet.models.blocks import activation as make_activation
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.params import Widths


def _stitch_init(n: int) -> torch.Tensor:
    if n == 1:
        return torch.ones(1, 1)  # a single column has nothing to mix with
    alpha = torch.full((n, n), 0.1 / (n - 1))
    alpha.fill_diagonal_(0.9)
    return alpha


@TRUNKS.register("cross_stitch")
class CrossStitch(Trunk):
    """``rep`` is the final stitched columns ``[T, B, H]``; every parameter is shared.

    Through the stitches every column's weights reach every task's loss, so the
    whole trunk counts as shared (the base default) and the shared
    representation is its output.
    """

    param_constraints = {"hidden": Widths}

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
        if not hidden:
            raise invalid_param("cross_stitch", "hidden", "a non-empty list of widths", hidden)
        n = len(self.tasks)
        dims = [input_dim, *hidden]
        self.columns = nn.ModuleList(BatchedLinear(n, a, b) for a, b in itertools.pairwise(dims))
        self.stitches = nn.ParameterList(nn.Parameter(_stitch_init(n)) for _ in hidden)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dims = {t: dims[-1] for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # [B, D] for the first layer, then [T, B, H]
        for column, alpha in zip(self.columns, self.stitches, strict=True):
            h = self.drop(self.act(column(h)))
            h = torch.einsum("ts,sbh->tbh", alpha, h)
        return h

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        return rep
