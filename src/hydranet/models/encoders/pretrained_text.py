"""The ``minilm`` encoder of text groups: a pretrained sentence encoder (all-MiniLM-L6-v2).

``ids [B, C, T] long → [B, C * hidden]``: every column's texts go through the transformer as
one batch of ``B * C`` sequences (attention mask: ``ids != pad_id``), each text's vector is the
mean of its tokens' last hidden states over that mask (the model's own sentence-transformers
pooling), and the columns' vectors are concatenated in column order.

The weights are a local directory (``weights``: ``config.json`` and ``model.safetensors``, as
``hydranet fetch-weights minilm`` writes it), loaded with ``local_files_only`` and the hub
offline: nothing is ever downloaded. The text group must be tokenized with the model's own
``tokenizer.json`` (its ``tokenizer`` param), since the ids index the model's embedding table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.base import ENCODERS, Encoder
from hydranet.params import NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["MiniLM", "load_local_transformer"]

FETCH_HINT = "`hydranet fetch-weights minilm` fetches it and prints the path"


def load_local_transformer(path: str | Path, what: str) -> nn.Module:
    """A Hugging Face model from the local directory ``path``; never a download."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{what}: {path} is not a model directory (no config.json); {FETCH_HINT}")
    # read when huggingface_hub is first imported; local_files_only is what guarantees it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    # hydranet's output is lines: no bar per load, and no report of the pooler's weights
    # that a sentence encoder leaves unused (add_pooling_layer=False)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot load the model in {path}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


@ENCODERS.register("minilm")
class MiniLM(Encoder):
    """Pretrained transformer sentence encoder, mean-pooled per text column.

    ``freeze`` (default) keeps the weights as they are (training then runs on embeddings
    computed once and cached); ``unfreeze_after`` = k trains the last ``unfreeze_blocks``
    transformer layers from epoch k + 1, at ``lr_scale`` × ``train.lr``.
    """

    kinds = ("text",)
    pretrained = True
    path_params = ("weights",)
    param_constraints = {
        "unfreeze_after": NonNegativeInt | None,
        "unfreeze_blocks": PositiveInt,
        "lr_scale": PositiveFloat,
    }

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        weights: str | None = None,
        freeze: bool = True,
        unfreeze_after: int | None = None,
        unfreeze_blocks: int = 1,
        lr_scale: float = 0.1,
    ):
        super().__init__(group, model_spec, state)
        if weights is None:
            raise UserError(
                f"encoder minilm: params.weights must name the model directory; {FETCH_HINT}"
            )
        self.weights, self.freeze = str(weights), bool(freeze)
        self.unfreeze_after = None if unfreeze_after is None else int(unfreeze_after)
        self.unfreeze_blocks, self.lr_scale = int(unfreeze_blocks), float(lr_scale)
        self.model = load_local_transformer(weights, "encoder minilm: params.weights")
        model_vocab = int(self.model.config.vocab_size)
        if int(group["vocab_size"]) != model_vocab:
            raise UserError(
                f"encoder minilm: the text group's tokenizer has {group['vocab_size']} ids, the model "
                f"in {weights} {model_vocab}; set the group's params.tokenizer to {Path(weights) / 'tokenizer.json'}"
            )
        self.pad_id = int(group["pad_id"])
        self.n_columns = int(group["shape"][0])
        self.hidden = int(self.model.config.hidden_size)
        self.out_dim = self.n_columns * self.hidden

    def blocks(self) -> list[nn.Module]:
        return [self.model.embeddings, *self.model.encoder.layer]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, c, t = ids.shape
        flat = ids.reshape(b * c, t)
        mask = flat != self.pad_id
        hidden = self.model(input_ids=flat, attention_mask=mask.long()).last_hidden_state
        keep = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return pooled.reshape(b, c * self.hidden)

    def extra_repr(self) -> str:
        return f"columns={self.n_columns}, weights={self.weights}, out_dim={self.out_dim}"
