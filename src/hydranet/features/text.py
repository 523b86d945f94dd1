"""Text feature group: string columns to token ids with a Hugging Face ``tokenizers`` tokenizer.

The tokenizer is a local ``tokenizer.json`` (``params.tokenizer``; nothing is ever downloaded)
or, with none given, a word-level one fitted on the training rows (``vocab_size``, default 8192): NFKC, lower case, split on
white space with each run of punctuation a word of its own; the ``vocab_size - 2`` most
frequent words (ties by word, so the fit is deterministic) after ``[PAD]`` = 0 and
``[UNK]`` = 1. Words are counted with Arrow kernels per record batch and the counts merged
(``group_by`` sum), as the categorical group does, so the fit streams. Either way the
tokenizer's JSON (``Tokenizer.to_str()``) is kept in the fitted state: a run needs no file
but its own, and nothing is unpickled.

The tensor is ``[N, C, T]`` int64 (C columns, T = ``max_tokens``): each text's ids,
truncated to T and padded with the pad id; a null text is all padding. The columns of a
group share one tokenizer; rows are encoded with ``encode_batch`` (Rust, in parallel).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field

from hydranet.errors import UserError
from hydranet.features.base import FEATURES, Columnar, FeatureGroup
from hydranet.params import PositiveInt

PAD, UNK = "[PAD]", "[UNK]"
# a run of characters that are neither word characters nor white space: one word of its own.
# Written with Unicode classes that Arrow's RE2 (which counts the words) and the tokenizer's
# Oniguruma (which splits the texts) read alike; \w and \s are ASCII-only in RE2.
_PUNCT = r"[^\p{L}\p{M}\p{N}_\s]+"
# pad tokens of common pretrained tokenizers, for a tokenizer.json that configures no padding
_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "<|pad|>", "<|padding|>")
# rows per encode_batch call: bounds the memory of the Encoding objects of a large table
_ENCODE_ROWS = 16384
# ids of the tokenizer fitted when none is given (with [PAD] and [UNK])
DEFAULT_VOCAB_SIZE = 8192


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The column as one plain ``string`` array (nulls kept)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column if column.type == pa.string() else pc.cast(column, pa.string())


def _words(text: pa.Array) -> pa.Array:
    """Every word of every non-null text, as the fitted tokenizer splits them."""
    norm = pc.utf8_lower(pc.utf8_normalize(pc.drop_null(text), "NFKC"))
    spaced = pc.replace_substring_regex(norm, f"({_PUNCT})", r" \1 ")
    words = pc.list_flatten(pc.utf8_split_whitespace(spaced))
    return words.filter(pc.greater(pc.utf8_length(words), 0))


def _word_level(words: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(_PUNCT), "isolated")]
    )
    return tok


def load_tokenizer(path: str, group: str) -> Any:
    """The ``tokenizer.json`` at ``path``; a missing or unreadable file is one line naming it."""
    from tokenizers import Tokenizer

    where = f"feature group {group!r}: params.tokenizer {path!r}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"{where} is not a file; pass the path of a local Hugging Face tokenizer.json "
            "(nothing is downloaded; a pretrained encoder's comes with its weights: "
            "`hydranet fetch-weights minilm` prints it), or leave 'tokenizer' out to fit one "
            "on the training data"
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for every kind of bad file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{where} is not a tokenizer.json that tokenizers can read: {first}"
        ) from None


@FEATURES.register("text")
class TextGroup(FeatureGroup):
    kind = "text"
    default_encoder = "bag"
    path_params = ("tokenizer",)  # relative to the spec file's directory (Spec.absolute_paths)
    param_constraints = {
        "tokenizer": str | None,
        "max_tokens": PositiveInt,
        "vocab_size": Annotated[int, Field(ge=3)] | None,
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        if params.get("tokenizer") is not None and params.get("vocab_size") is not None:
            # a given tokenizer's vocabulary is its own: the value would be silently ignored
            return [
                (
                    "vocab_size",
                    "sizes the tokenizer hydranet fits; with 'tokenizer' given, leave it out",
                )
            ]
        return []

    def __init__(
        self,
        name: str,
        columns: Sequence[str],
        tokenizer: str | None = None,
        max_tokens: int = 64,
        vocab_size: int | None = None,
    ):
        super().__init__(name, columns)
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be at least 1; got {max_tokens}")
        if vocab_size is not None and int(vocab_size) < 3:
            raise ValueError(f"vocab_size must be at least 3; got {vocab_size}")
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.max_tokens = int(max_tokens)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self._counts: pa.Table | None = None
        self._given: Any = None  # the tokenizer loaded from params.tokenizer, once per fit
        self._tok: Any = None  # the fitted tokenizer, set up to pad and truncate

    def params(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "max_tokens": self.max_tokens,
            "vocab_size": self.vocab_size,
        }

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        if _is_text(type_):
            return None
        return f"has type {type_}; a text column holds strings"

    # ------------------------------------------------------------ fitting
    def partial_fit(self, batch: Columnar) -> TextGroup:
        if self.tokenizer is not None:
            if self._given is None:
                self._given = load_tokenizer(self.tokenizer, self.name)
            return self
        for name in self.columns:
            counts = pc.value_counts(_words(_strings(batch.column(name))))
            part = pa.table({"word": counts.field("values"), "count": counts.field("counts")})
            if self._counts is not None:
                merged = (
                    pa.concat_tables([self._counts, part])
                    .group_by("word")
                    .aggregate([("count", "sum")])
                )
                part = pa.table({"word": merged["word"], "count": merged["count_sum"]})
            self._counts = part
        return self

    def finish(self) -> TextGroup:
        if self.tokenizer is not None:
            tok = self._given or load_tokenizer(self.tokenizer, self.name)
            state = {"tokenizer_": tok.to_str(), "pad_id_": _pad_id(tok)}
        else:
            counts = self._counts
            if counts is None:
                counts = pa.table(
                    {"word": pa.array([], pa.string()), "count": pa.array([], pa.int64())}
                )
            order = pc.sort_indices(
                counts, sort_keys=[("count", "descending"), ("word", "ascending")]
            )
            size = DEFAULT_VOCAB_SIZE if self.vocab_size is None else self.vocab_size
            words = counts["word"].take(order[: size - 2]).to_pylist()
            state = {"tokenizer_": _word_level(words).to_str(), "pad_id_": 0}
        self._counts = None
        self._given = None
        self.load_fitted(state)
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "tokenizer_")

    # ------------------------------------------------------------ use
    @property
    def n_ids(self) -> int:
        """Embedding rows an encoder needs: every id the tokenizer gives, and the pad id."""
        self._require_fitted()
        return max(self._tok.get_vocab_size(with_added_tokens=True), self.pad_id_ + 1)

    def info(self) -> dict[str, Any]:
        return {
            "vocab_size": self.n_ids,
            "pad_id": self.pad_id_,
            "shape": [len(self.columns), self.max_tokens],
        }

    def summary(self) -> str:
        source = "fitted" if self.tokenizer is None else self.tokenizer
        return f"tokenizer {source}, {self.n_ids:,} ids, {self.max_tokens} tokens per text"

    def transform(self, table: Columnar) -> torch.Tensor:
        self._require_fitted()
        n, t = table.num_rows, self.max_tokens
        out = np.full((len(self.columns), n, t), self.pad_id_, dtype=np.int64)
        for j, name in enumerate(self.columns):
            col = table.column(name)
            why = self.column_problem(name, col.type)
            if why:
                raise UserError(f"text column {name!r} {why}")
            text = _strings(col)
            rows = np.flatnonzero(pc.is_valid(text).to_numpy(zero_copy_only=False))
            values = pc.drop_null(text)
            for start in range(0, len(values), _ENCODE_ROWS):
                chunk = values.slice(start, _ENCODE_ROWS).to_pylist()
                encoded = self._encode(chunk)
                out[j, rows[start : start + len(chunk)]] = np.array(
                    [e.ids for e in encoded], dtype=np.int64
                ).reshape(len(chunk), t)
        # filled column-major (each column's rows contiguous), transposed once at the end
        return torch.from_numpy(out).transpose(0, 1).contiguous()

    def _encode(self, texts: list[str]) -> list[Any]:
        fast = getattr(self._tok, "encode_batch_fast", None)  # no character offsets: faster
        return (fast or self._tok.encode_batch)(texts)

    # ------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, Any]:
        return {"tokenizer_": self.tokenizer_, "pad_id_": self.pad_id_}

    def load_fitted(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer_ = str(state["tokenizer_"])
        self.pad_id_ = int(state["pad_id_"])
        tok = Tokenizer.from_str(self.tokenizer_)
        tok.enable_truncation(max_length=self.max_tokens)
        token = tok.id_to_token(self.pad_id_) or PAD
        tok.enable_padding(length=self.max_tokens, pad_id=self.pad_id_, pad_token=token)
        self._tok = tok

    @classmethod
    def example_table(cls, n: int, seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        words = np.array(["red", "Green", "blue", "cat", "dog", "a", "the", "big", "small", "!"])

        def text(k: int) -> list[str | None]:
            return [
                " ".join(words[rng.integers(0, len(words), rng.integers(0, k))]) for _ in range(n)
            ]

        title, body = text(5), text(12)
        title[0] = None
        body[1] = None
        return pa.table({"title": title, "body": body}), {"max_tokens": 8, "vocab_size": 8}


def _pad_id(tok: Any) -> int:
    """The pad id of a loaded tokenizer: its configured padding, a known pad token, or else a
    new id after its vocabulary (the encoder's table gets a row for it)."""
    if tok.padding is not None:
        return int(tok.padding["pad_id"])
    for token in _PAD_TOKENS:
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return int(tok.get_vocab_size(with_added_tokens=True))
