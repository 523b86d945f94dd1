"""Row encoders of the text and image feature kinds (see :mod:`hydranet.serve.encode`).

Both hand the work to the feature group itself, so that a request is tokenized and
decoded exactly as training did:

* text: a string or ``null`` per value; the request's texts go through the group's own
  ``transform`` (its fitted tokenizer, truncation and padding) → int64 ``[n, C, T]``.
* image: a base64 string of the image file's bytes (PNG, JPEG, whatever Pillow reads)
  or ``null``; decoded, resized and composited by the image kind's own decoding →
  uint8 ``[n, C, 3, S, S]``. Base64 that is not base64 or bytes that are not an image
  are a 422 naming the row and field. In batch predict the column holds what it held
  in training (a path, raw bytes); a value that cannot be decoded is a bad row
  (``--bad-rows``).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hydranet.errors import DataError
from hydranet.features.image import decode
from hydranet.serve.encode import ROW_ENCODERS, Cell, RowEncoder, _encodable, _refuse_types
from hydranet.serve.problems import Problems

__all__ = ["ImageRows", "TextRows"]

_TEXT_OR_NULL = {str, type(None)}


def _check_strings(
    values: list[list[Any]], names: list[str], expected: str, problems: Problems
) -> bool:
    """True when every value is a string or null that UTF-8 can hold; else each culprit is
    added to ``problems``."""
    types = set(map(type, itertools.chain.from_iterable(values)))
    if not types <= _TEXT_OR_NULL:
        _refuse_types(values, names, _TEXT_OR_NULL, expected, problems)
        return False
    try:
        # one C call proves every string is encodable; JSON allows lone surrogates, Arrow does not
        "".join(s for row in values for s in row if s is not None).encode("utf-8")
    except UnicodeEncodeError:
        for i, row in enumerate(values):
            for j, s in enumerate(row):
                if s is not None and not _encodable(s):
                    problems.add(i, names[j], "string is not valid Unicode (a lone surrogate)")
        return False
    return True


@ROW_ENCODERS.register("text")
class TextRows(RowEncoder):
    """A string or ``null`` (all padding) per value, tokenized by the group's fitted tokenizer."""

    kind = "text"

    def check(self, values: list[list[Any]], problems: Problems) -> list[list[str | None]]:
        if not _check_strings(values, self.columns, "a string or null for text feature", problems):
            return []
        return values

    def encode_rows(self, texts: list[list[str | None]]) -> np.ndarray:
        """``[n, C, T]`` int64 ids: the group's ``transform`` on the texts as Arrow columns, so
        that the ids are the ones training made (truncation, padding, null = all padding)."""
        columns = {
            name: pa.array([row[j] for row in texts], pa.string())
            for j, name in enumerate(self.columns)
        }
        return self.group.transform(pa.table(columns)).numpy()


@ROW_ENCODERS.register("image")
class ImageRows(RowEncoder):
    """A base64 string of an image file's bytes, or ``null`` (a white picture, as in training),
    per value; decoded by the image kind's own ``decode`` (same pixels as training)."""

    kind = "image"

    def check(self, values: list[list[Any]], problems: Problems) -> np.ndarray:
        names, size = self.columns, self.group.size
        out = np.full((len(values), len(names), 3, size, size), 255, dtype=np.uint8)
        if not _check_strings(
            values, names, "a base64 string of the image file or null for image feature", problems
        ):
            return out
        for i, row in enumerate(values):
            for j, text in enumerate(row):
                if text is None:
                    continue
                data = _base64(text)
                if data is None:
                    problems.add(
                        i, names[j], "not base64; send the image file's bytes base64-encoded"
                    )
                    continue
                try:
                    out[i, j] = decode(data, size)
                except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on bad bytes
                    problems.add(i, names[j], f"cannot decode the image: {_why(e)}")
        return out

    def encode_rows(self, checked: np.ndarray) -> np.ndarray:
        return checked  # decoded in check, where an undecodable value must be named

    def encode_columns(self, table: pa.Table | pa.RecordBatch) -> tuple[torch.Tensor, list[Cell]]:
        """Batch predict: the column holds what it held in training (a path, resolved as the
        kind resolves it, against the group's ``root`` param or else the working directory;
        or the file's bytes). The group's ``transform`` (and its decode cache) when every
        value decodes; else each value on its own, an undecodable one a bad row (white)."""
        try:
            return self.group.transform(table), []
        except DataError:
            pass  # some value cannot be read or decoded: find each, as the server would
        size, n = self.group.size, table.num_rows
        out = np.full((n, len(self.columns), 3, size, size), 255, dtype=np.uint8)
        cells: list[Cell] = []
        for j, name in enumerate(self.columns):
            for r, v in enumerate(self.group.sources(table.column(name))):
                if v is None:
                    continue
                try:
                    out[r, j] = decode(v, size)
                except Exception as e:  # noqa: BLE001 - as in check: any failure is the value's
                    what = "the image bytes" if isinstance(v, bytes) else v
                    cells.append((r, name, f"cannot decode {what}: {_why(e)}"))
        return torch.from_numpy(out), cells


_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,")


def _base64(text: str) -> bytes | None:
    """The bytes of a base64 string (a ``data:...;base64,`` URL too), or None when it is not
    base64 (strict: a stray character is refused rather than skipped)."""
    text = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _why(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):  # its message repeats the file's name
        return "not an image file Pillow can read"
    text = getattr(e, "strerror", None) or str(e)
    return (text.splitlines()[0] if text else "") or type(e).__name__
