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

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

from hydranet.serve.encode import ROW_ENCODERS, RowEncoder, _encodable, _refuse_types
from hydranet.serve.problems import Problems

__all__ = ["TextRows"]

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
