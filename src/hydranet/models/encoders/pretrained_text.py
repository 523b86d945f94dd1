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

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.base import (
    ENCODERS,
    TRANSFER_CONSTRAINTS,
    Encoder,
    building_from_checkpoint,
)

__all__ = ["MiniLM", "load_local_transformer", "read_config", "transformer_from_config"]

FETCH_HINT = "`hydranet fetch-weights minilm` fetches it and prints the path"


def _config_file(path: str | Path, what: str) -> Path:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{what}: {path} is not a model directory (no config.json); {FETCH_HINT}")
    return file


def read_config(path: str | Path, what: str) -> dict[str, Any]:
    """The model directory's ``config.json``: all a run needs to rebuild the architecture."""
    file = _config_file(path, what)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{what}: {file} is not readable JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UserError(f"{what}: {file} names no model_type; {FETCH_HINT}")
    return config


def transformer_from_config(config: dict[str, Any]) -> nn.Module:
    """The architecture ``config`` (a ``config.json``'s content) describes, freshly
    initialised: its weights come from a run's checkpoint. Reads no file."""
    from transformers import AutoConfig, AutoModel

    with _quiet_transformers():
        return AutoModel.from_config(AutoConfig.for_model(**config), add_pooling_layer=False)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    # hydranet's output is lines: no bar per load, and no report of the pooler's weights
    # that a sentence encoder leaves unused (add_pooling_layer=False)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_local_transformer(path: str | Path, what: str) -> nn.Module:
    """A Hugging Face model from the local directory ``path``; never a download."""
    path = Path(path)
    _config_file(path, what)
    # read when huggingface_hub is first imported; local_files_only is what guarantees it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    try:
        with _quiet_transformers():
            return AutoModel.from_pretrained(
                str(path), local_files_only=True, add_pooling_layer=False
            )
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot load the model in {path}: {first}") from None


@ENCODERS.register("minilm")
class MiniLM(Encoder):
    """Pretrained transformer sentence encoder, mean-pooled per text column.

    ``freeze`` (default) keeps the weights as they are (training then runs on embeddings
    computed once and cached); ``unfreeze_after`` = k trains the last ``unfreeze_blocks``
    transformer layers from epoch k + 1, at ``lr_scale`` × ``train.lr``.
    """

    kinds = ("text",)
    pretrained = True
    # the "fitted" state is the model's config.json: a run rebuilds the architecture from it
    # and takes the weights from its checkpoint, without the model directory
    needs_fit = True
    path_params = ("weights",)
    param_constraints = TRANSFER_CONSTRAINTS

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
        self.weights = _weights_dir(weights)
        self.set_transfer(freeze, unfreeze_after, unfreeze_blocks, lr_scale)
        if building_from_checkpoint() and state is not None:
            self.model = transformer_from_config(state["config"])
        else:  # training, or a run saved before encoders.json held the config
            self.model = load_local_transformer(weights, _WHAT)
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
        if self.freeze:
            self.model.requires_grad_(False)

    @classmethod
    def fit_state(cls, group, x, params, target) -> dict[str, Any]:
        return {"config": read_config(_weights_dir(params.get("weights")), _WHAT)}

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

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        ids = torch.randint(1, _EXAMPLE_VOCAB, (8, 2, 5))
        ids[0, 1] = 0  # an empty text: all padding
        ids[1, 0, 3:] = 0
        group = {"kind": "text", "vocab_size": _EXAMPLE_VOCAB, "pad_id": 0, "shape": [2, 5]}
        return group, ids

    @classmethod
    def example_params(cls) -> dict[str, Any]:
        """Params for the contract tests: a tiny BertModel's directory (written once per
        process, to a temporary directory), fine-tuned whole so every parameter trains."""
        return {"weights": str(_example_model()), "freeze": False}


_WHAT = "encoder minilm: params.weights"
_EXAMPLE_VOCAB = 13
_example_dir: Path | None = None


def _weights_dir(weights: str | None) -> str:
    if weights is None:
        raise UserError(f"{_WHAT} must name the model directory; {FETCH_HINT}")
    return str(weights)


def _example_model() -> Path:
    import tempfile

    from transformers import BertConfig, BertModel

    global _example_dir
    if _example_dir is None or not (_example_dir / "config.json").is_file():
        # no dropout: the contract compares two calls of a freshly built (training-mode) module
        config = BertConfig(
            vocab_size=_EXAMPLE_VOCAB,
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        path = Path(tempfile.mkdtemp(prefix="hydranet-minilm-"))
        with torch.random.fork_rng(), _quiet_transformers():
            torch.manual_seed(0)
            BertModel(config, add_pooling_layer=False).save_pretrained(str(path))
        _example_dir = path
    return _example_dir
