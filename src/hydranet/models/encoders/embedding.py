"""The ``embedding`` encoder of categorical groups: one embedding row per column, flattened.

All categorical features of a group share ONE ``nn.Embedding`` table (DESIGN.md,
performance principle 3): feature ``j``'s local index ``i`` (``0 <= i <
cardinalities[j]``, the preprocessor's vocabulary including its out-of-vocabulary
bucket) lives at row ``offsets[j] + i``. One lookup serves every feature, with no
Python loop over features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.base import ENCODERS, Encoder
from hydranet.params import PositiveFloat, PositiveInt


@ENCODERS.register("embedding")
class Embedding(Encoder):
    """``cat [B, C] long → [B, C * dim]``: column ``j``'s embedding at ``[j*dim, (j+1)*dim)``.

    ``dim`` and ``init_std`` default to ``model.embedding_dim`` and
    ``model.embedding_init_std``; rows start from ``N(0, init_std)`` (see
    ``MultiTaskModel._initialise`` for why small).
    """

    kinds = ("categorical",)
    param_constraints = {"dim": PositiveInt | None, "init_std": PositiveFloat | None}

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        dim: int | None = None,
        init_std: float | None = None,
    ):
        super().__init__(group, model_spec, state)
        cards = [int(c) for c in group["cardinalities"]]
        if not cards or any(c < 1 for c in cards):
            raise UserError(f"every categorical feature needs at least one category; got {cards}")
        embedding_dim = int(dim or (model_spec.embedding_dim if model_spec is not None else 4))
        if embedding_dim < 1:
            raise UserError(f"the embedding dimension must be at least 1; got {embedding_dim}")
        self.init_std = float(
            init_std or (model_spec.embedding_init_std if model_spec is not None else 0.05)
        )
        self.cardinalities = cards
        self.n_categorical = len(cards)
        self.embedding_dim = embedding_dim
        self.out_dim = self.n_categorical * embedding_dim
        self.embedding = nn.Embedding(sum(cards), embedding_dim)
        starts = [0]
        for c in cards[:-1]:
            starts.append(starts[-1] + c)
        # Derived from the cardinalities, so not part of the checkpoint.
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)
        # the same offsets in the flattened table, one per (column, component): [C, dim]
        flat = self.offsets[:, None] * embedding_dim + torch.arange(embedding_dim)
        self.register_buffer("flat_offsets", flat, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, 0.0, self.init_std)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        if self._flat_gather(weight):
            # The table read as one flat vector, one index per component: the same values
            # and gradient, but the backward is a 1-D scatter_add. A 2-D index_add_ runs one
            # small add per looked-up row, and each opens a parallel region when torch has
            # several threads: census batch 1024 (31 columns, dim 4), forward and backward
            # on 2 threads, 1.98 ms by rows against 0.72 ms flat; on 1 thread rows are
            # faster (0.42 against 0.78 ms), so they stay the path there.
            flat = (cat.unsqueeze(-1) * self.embedding_dim + self.flat_offsets).reshape(-1)
            emb = weight.view(-1).gather(0, flat)
        else:
            # index_select rather than nn.Embedding's forward: the same rows and the
            # same gradient, but its backward is one index_add_, which on CPU costs a
            # quarter of embedding_dense_backward (about 20% of an MMoE census step).
            idx = (cat + self.offsets).reshape(-1)
            emb = weight.index_select(0, idx)  # [B*C, dim]
        return emb.view(cat.shape[0], -1)

    @staticmethod
    def _flat_gather(weight: torch.Tensor) -> bool:
        """Training on a CPU with several threads (see ``forward``); never in ONNX export, and
        never under ``torch.compile`` (its kernels are its own, and ``get_num_threads`` cannot
        be traced into a full graph)."""
        if torch.compiler.is_compiling():
            return False
        return (
            weight.device.type == "cpu"
            and weight.requires_grad
            and torch.is_grad_enabled()
            and torch.get_num_threads() > 1
            and not torch.onnx.is_in_onnx_export()
        )

    def extra_repr(self) -> str:
        return f"columns={self.n_categorical}, dim={self.embedding_dim}, out_dim={self.out_dim}"

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        cards = [5, 3, 7]
        x = torch.stack([torch.randint(0, c, (64,)) for c in cards], dim=1)
        return {"kind": "categorical", "cardinalities": cards}, x
