"""The ``bag`` encoder of text groups: the mean of each text's token embeddings, per column.

``ids [B, C, T] long → [B, C * d_embedding]``: column ``j``'s vector (the mean of the
embeddings of its non-pad tokens; zeros for an all-padding text) at ``[j*d, (j+1)*d)``.
Each column has its own table (a title's "red" need not mean a review's "red"), stored as
ONE ``nn.EmbeddingBag`` of ``C * vocab_size + 1`` rows: column ``j``'s id ``i`` at row
``j * vocab_size + i``, every pad id at the last row, its ``padding_idx`` (left out of the
mean, never trained). One bag lookup serves every column, with no Python loop over them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.base import ENCODERS, Encoder
from hydranet.params import PositiveFloat, PositiveInt


@ENCODERS.register("bag")
class Bag(Encoder):
    """Bag of embeddings (a from-scratch text encoder): per column, the mean over non-pad tokens.

    ``init_std`` defaults to ``model.embedding_init_std`` (rows start from ``N(0, init_std)``,
    small for the reason ``MultiTaskModel._initialise`` gives).
    """

    kinds = ("text",)
    param_constraints = {"d_embedding": PositiveInt, "init_std": PositiveFloat | None}

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        d_embedding: int = 32,
        init_std: float | None = None,
    ):
        super().__init__(group, model_spec, state)
        vocab, pad = int(group["vocab_size"]), int(group["pad_id"])
        n_columns, _ = (int(v) for v in group["shape"])
        if not 0 <= pad < vocab:
            raise UserError(f"text group: pad id {pad} is not below the vocabulary size {vocab}")
        if int(d_embedding) < 1:
            raise UserError(f"d_embedding must be at least 1; got {d_embedding}")
        self.vocab_size, self.pad_id, self.n_columns = vocab, pad, n_columns
        self.d_embedding = int(d_embedding)
        self.init_std = float(
            init_std or (model_spec.embedding_init_std if model_spec is not None else 0.05)
        )
        self.out_dim = n_columns * self.d_embedding
        rows = n_columns * vocab + 1
        self.bag = nn.EmbeddingBag(rows, self.d_embedding, mode="mean", padding_idx=rows - 1)
        # derived from the group, so not part of the checkpoint
        offsets = torch.arange(n_columns, dtype=torch.long) * vocab
        self.register_buffer("offsets", offsets.view(1, n_columns, 1), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.bag.weight, 0.0, self.init_std)
        self.bag.weight[self.bag.padding_idx].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b = ids.shape[0]
        rows = torch.where(ids == self.pad_id, self.bag.padding_idx, ids + self.offsets)
        rows = rows.reshape(b * self.n_columns, -1)
        if torch.onnx.is_in_onnx_export():
            # the TorchScript exporter has no embedding_bag with a padding_idx
            return self.reference(rows).reshape(b, self.out_dim)
        return self.bag(rows).reshape(b, self.out_dim)

    def reference(self, rows: torch.Tensor) -> torch.Tensor:
        """The bag's mean written out (the ONNX graph, and the check of the fast path):
        ``rows [n, T]`` table rows → ``[n, d]``, the mean of the non-pad rows, 0 if none."""
        keep = (rows != self.bag.padding_idx).to(self.bag.weight.dtype).unsqueeze(-1)
        total = (nn.functional.embedding(rows, self.bag.weight) * keep).sum(dim=1)
        return total / keep.sum(dim=1).clamp(min=1.0)

    def extra_repr(self) -> str:
        return (
            f"columns={self.n_columns}, vocab_size={self.vocab_size}, "
            f"d_embedding={self.d_embedding}, out_dim={self.out_dim}"
        )

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        vocab, pad, t = 20, 0, 6
        ids = torch.randint(1, vocab, (64, 2, t))
        lengths = torch.randint(0, t + 1, (64, 2, 1))
        ids = torch.where(torch.arange(t) < lengths, ids, pad)  # padded texts, some empty
        return {"kind": "text", "vocab_size": vocab, "pad_id": pad, "shape": [2, t]}, ids
