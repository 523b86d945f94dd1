"""Building blocks shared by encoders, trunks and towers.

The batched blocks hold ``G`` independent networks (experts, per-task columns,
towers) in one weight tensor so that all of them run as a single batched matmul
(DESIGN.md, performance principle 3): no Python loop over groups per step.

Layout: batched activations are ``[G, B, H]`` (group first). That is the layout
``torch.baddbmm`` wants, and ``h[g]`` is group ``g``'s ``[B, H]`` output without
a copy. A batched block takes either a plain ``[B, in]`` input, fed to every
group (one GEMM against the groups' weights laid side by side), or a per-group
``[G, B, in]`` input (one ``baddbmm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hydranet.errors import UserError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by its Spec name (relu, gelu, silu, tanh)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        valid = ", ".join(sorted(_ACTIVATIONS))
        raise UserError(f"unknown activation {name!r}; valid: {valid}") from None


class MLP(nn.Module):
    """``Linear → activation → dropout`` per hidden size; ``hidden=[]`` is the identity.

    The activation follows every layer, the last included: an MLP here is a
    hidden stack, and whoever needs logits adds its own final ``nn.Linear``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers += [nn.Linear(dim, width), _act(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = width
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchedLinear(nn.Module):
    """``G`` independent ``nn.Linear(in_dim, out_dim)`` layers as one batched matmul.

    ``weight`` is ``[G, in, out]`` and ``bias`` ``[G, out]``; group ``g`` computes
    ``x @ weight[g] + bias[g]`` (so ``nn.Linear.weight == weight[g].T``).

    * ``x: [B, in]`` (the same input for every group) → ``[G, B, out]``, computed
      as one ``[B, in] @ [in, G*out]`` GEMM and returned as a strided view.
    * ``x: [G, B, in]`` (one input per group) → ``[G, B, out]`` via ``baddbmm``.
    """

    def __init__(self, groups: int, in_dim: int, out_dim: int):
        super().__init__()
        self.groups, self.in_dim, self.out_dim = groups, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default (kaiming_uniform with a=sqrt(5), bias from fan-in)
        # works out to U(-1/sqrt(in), 1/sqrt(in)) for both; same per group.
        bound = 1.0 / math.sqrt(self.in_dim) if self.in_dim > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            batch = x.shape[0]
            # Lay the groups' weights side by side: one large GEMM beats G small ones.
            w = self.weight.transpose(0, 1).reshape(self.in_dim, self.groups * self.out_dim)
            y = torch.addmm(self.bias.reshape(-1), x, w)
            return y.view(batch, self.groups, self.out_dim).transpose(0, 1)
        if x.dim() == 3 and x.shape[0] == self.groups:
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)
        raise ValueError(
            f"BatchedLinear expects [B, {self.in_dim}] or [{self.groups}, B, {self.in_dim}]; "
            f"got {tuple(x.shape)}"
        )

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_dim={self.in_dim}, out_dim={self.out_dim}"


class BatchedMLP(nn.Module):
    """``G`` independent :class:`MLP` s with the same shape, run as batched matmuls.

    Input ``[B, in]`` (shared by all groups) or ``[G, B, in]``; output ``[G, B, H]``.
    ``hidden=[]`` is the identity (a shared input is broadcast to ``[G, B, in]``
    as a view).
    """

    def __init__(
        self,
        groups: int,
        in_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.groups, self.in_dim = groups, in_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers += [BatchedLinear(groups, dim, width), _act(activation)]
            if dropout > 0:
                # Elementwise masks on [G, B, H] are independent per group, as
                # they would be in G separate MLPs.
                layers.append(nn.Dropout(dropout))
            dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.net) == 0 and x.dim() == 2:
            return x.expand(self.groups, *x.shape)
        return self.net(x)


def _act(name: str) -> nn.Module:
    # The constructors' ``activation`` argument shadows the module-level function.
    return activation(name)


def gate_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.softmax(dim=-1)``, fast on the CPU for the narrowest gates of expert trunks.

    PyTorch's CPU softmax vectorises along the softmax dimension, in vectors of 8 floats on
    AVX2; a gate over fewer than 8 experts falls short of one vector. There, moving the
    experts' dimension outermost lets the kernel vectorise across the rows instead. Forward and
    backward on one thread, 1,024 rows per gate, torch 2.14 (2-core AMD EPYC benchmark machine):

    | gates x experts | experts outermost | plain softmax |
    | --- | --- | --- |
    | 8 x 4 | 0.46 ms | 1.19 ms |
    | 8 x 7 | 0.68 ms | 1.78 ms |
    | 8 x 8 | 0.75 ms | 0.47 ms |
    | 8 x 15 | 1.64 ms | 0.80 ms |
    | 2 x 8 | 0.29 ms | 0.21 ms |

    So from 8 experts on the plain softmax is the faster (under torch 2.13 the threshold was
    16). The result is laid out as the plain softmax's is, contiguous; values agree to a few
    ulps. CUDA and ONNX export keep the plain softmax (ONNX Runtime transposes non-last axes
    itself).
    """
    if logits.device.type != "cpu" or logits.shape[-1] >= 8 or torch.onnx.is_in_onnx_export():
        return logits.softmax(dim=-1)
    front = logits.movedim(-1, 0).contiguous().softmax(dim=0)
    return front.movedim(0, -1).contiguous()


def mix_experts(experts: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sums of expert outputs: ``out[t] = sum_e probs[t, :, e] * experts[e]``.

    ``experts: [E, B, H]``, ``probs: [T, B, E]`` → ``[T, B, H]``; one batched
    contraction for all gates at once.

    On the CPU, when the experts are the strided ``[E, B, H]`` view of one ``[B, E*H]`` GEMM
    (a one-layer :class:`BatchedMLP`, the default expert), the contraction is a broadcast
    multiply and a sum over ``E`` in that memory order. ``einsum`` lowers to ``bmm`` over the
    batch (``[B, T, E] @ [B, E, H]``), thousands of 2x8-by-8x16 products whose backward alone
    took 0.7 ms of a 6.4 ms census step on one thread; the broadcast form took the step to
    5.5 ms (``benchmarks/peers_census.py`` machine, median of 8 rotated rounds). The product
    it materialises is ``T*B*E*H`` floats, so large mixes (and CUDA, where ``bmm`` is fast)
    keep ``einsum``. Values agree to a few ulps.
    """
    by_row = experts.transpose(0, 1)  # [B, E, H]
    if (
        experts.device.type == "cpu"
        and by_row.is_contiguous()
        and probs.numel() * experts.shape[-1] <= _BROADCAST_MIX_LIMIT
        and not torch.onnx.is_in_onnx_export()
    ):
        return (probs.unsqueeze(-1) * by_row.unsqueeze(0)).sum(dim=2)
    return torch.einsum("ebh,tbe->tbh", experts, probs)


# Largest ``T*B*E*H`` product mix_experts materialises (16 MiB of float32).
_BROADCAST_MIX_LIMIT = 1 << 22


def invalid_param(architecture: str, key: str, must: str, got: object) -> UserError:
    """The error for a bad architecture hyper-parameter, worded the same everywhere."""
    return UserError(
        f"model.params.{key}: the {key!r} parameter of {architecture!r} must be {must}; got {got!r}"
    )
