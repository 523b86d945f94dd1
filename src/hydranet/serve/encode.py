"""Validated JSON values to the model's input arrays without an Arrow table: the serving fast path.

:meth:`Preprocessor.transform` works on Arrow columns, about six compute calls
per column with tens of microseconds of fixed cost each: some 10 ms for the 38
census features whatever the number of rows, more than everything else a
single-row request costs together. Here the same fitted state
(``vocabularies_``, ``mean_``, ``scale_``, ``log1p``, ``missing_indicator_``)
is applied with one dict lookup per categorical value (in the request's own
validation pass) and numpy over the whole micro-batch for the numeric values.
``tests/test_serve_app.py`` checks the result against ``Preprocessor.transform``
bit for bit, log1p columns, missing values and unseen categories included.
"""

from __future__ import annotations

import numpy as np

from hydranet.data.preprocess import MISSING, OOV, Preprocessor

_RESERVED = 2  # vocabulary indices start after out-of-vocabulary (0) and missing (1)


class RowEncoder:
    def __init__(self, preprocessor: Preprocessor):
        p = preprocessor
        self.numeric, self.categorical = list(p.numeric), list(p.categorical)
        self._lookups = [
            {v: i + _RESERVED for i, v in enumerate(p.vocabularies_[c])} for c in p.categorical
        ]
        self._mean = np.asarray(p.mean_, dtype=np.float64)
        self._scale = np.asarray(p.scale_, dtype=np.float64)
        self._log1p = np.array([c in p.log1p for c in p.numeric], dtype=bool)
        self._flagged = np.flatnonzero(np.asarray(p.missing_indicator_, dtype=bool))
        self.names_out = p.numeric_names_out

    def encode_categorical(self, texts: list[list[str | None]]) -> np.ndarray:
        """``[n, C]`` int64 indices from rows of category texts (``None``: missing)."""
        lookups = self._lookups
        codes = [
            [MISSING if t is None else lk.get(t, OOV) for t, lk in zip(row, lookups, strict=True)]
            for row in texts
        ]
        return np.array(codes, dtype=np.int64).reshape(len(texts), len(lookups))

    def scale_numeric(self, raw: np.ndarray) -> np.ndarray:
        """``[n, n_numeric_out]`` float32 from raw ``[n, N]`` float64 values (NaN: missing).

        The same operations in the same order as ``Preprocessor.transform``: signed
        log1p, missing = not finite, ``(x - mean) / scale``, missing to 0, float32,
        then one 0/1 indicator per column that had missing values in training.
        """
        x = raw.copy()
        if self._log1p.any():
            sub = x[:, self._log1p]
            x[:, self._log1p] = np.sign(sub) * np.log1p(np.abs(sub))
        miss = ~np.isfinite(x)
        x -= self._mean
        x /= self._scale
        x[miss] = 0.0
        out = np.empty((x.shape[0], x.shape[1] + self._flagged.size), dtype=np.float32)
        with np.errstate(over="ignore"):  # a finite value beyond float32: the caller reports it
            out[:, : x.shape[1]] = x
        out[:, x.shape[1] :] = miss[:, self._flagged]
        return out
