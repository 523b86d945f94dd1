"""Feature encoder: categorical embeddings and numeric features into one flat vector.

All categorical features share ONE ``nn.Embedding`` table (DESIGN.md,
performance principle 3): feature ``j``'s local index ``i`` (``0 <= i <
cardinalities[j]``, the preprocessor's vocabulary including its out-of-vocabulary
bucket) lives at row ``offsets[j] + i``. One lookup serves every feature, with no
Python loop over features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hydranet.errors import UserError


class FeatureEncoder(nn.Module):
    """``(cat [B, C] long, num [B, N] float) → [B, C*embedding_dim + N]``.

    Embeddings of the C categorical features come first, in column order, then
    the N numeric features as given (the preprocessor has already scaled them).
    Either part may be empty.
    """

    def __init__(self, cardinalities: Sequence[int], n_numeric: int, embedding_dim: int):
        super().__init__()
        cards = [int(c) for c in cardinalities]
        if any(c < 1 for c in cards):
            raise UserError(f"every categorical feature needs at least one category; got {cards}")
        if n_numeric < 0 or embedding_dim < 1:
            raise UserError(
                f"n_numeric must be >= 0 and embedding_dim >= 1; got {n_numeric}, {embedding_dim}"
            )
        if not cards and n_numeric == 0:
            raise UserError("the model needs at least one categorical or numeric feature")
        self.cardinalities = cards
        self.n_categorical = len(cards)
        self.n_numeric = n_numeric
        self.embedding_dim = embedding_dim
        self.out_dim = self.n_categorical * embedding_dim + n_numeric
        # No table at all without categorical features: a 0-row parameter would
        # only be noise in optimizers and checkpoints.
        self.embedding = nn.Embedding(sum(cards), embedding_dim) if cards else None
        starts = [0]
        for c in cards[:-1]:
            starts.append(starts[-1] + c)
        # Derived from the cardinalities, so not part of the checkpoint.
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)
        # the same offsets in the flattened table, one per (column, component): [C, dim]
        flat = self.offsets[:, None] * embedding_dim + torch.arange(embedding_dim)
        self.register_buffer("flat_offsets", flat, persistent=False)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.embedding is not None:
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
            parts.append(emb.view(cat.shape[0], -1))
        if self.n_numeric:
            parts.append(num)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

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
        return (
            f"categorical={self.n_categorical}, numeric={self.n_numeric}, "
            f"embedding_dim={self.embedding_dim}, out_dim={self.out_dim}"
        )
