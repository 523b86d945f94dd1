"""Image feature group: columns of image paths or encoded bytes to a uint8 tensor of pictures.

A column holds a path (string; a relative path resolves against ``params.root``, else the
working directory), the encoded file's bytes (``binary`` / ``large_binary``), or null: a
blank white picture, so a row without one still trains. Each image is decoded with Pillow
once, composited on white when it has transparency (RGBA, LA, P with a transparent colour),
and the WHOLE picture resized to ``size`` × ``size`` (no crop, so a non-square picture is
squashed: simple, and nothing of it is lost; the encoders' random crop does the rest).

The tensor is ``[N, C, 3, S, S]`` uint8 (C columns, S = ``size``); encoders scale and
normalise it themselves. There is nothing to fit: ``partial_fit`` and ``finish`` only mark
the group fitted.

Decoding is the expensive part, so ``transform`` keeps its result in a cache file,
``<$HYDRANET_DATA_DIR or ~/.cache/hydranet>/images/<key>.npy``, ``key`` the sha256 of the
columns' contents (each value's bytes, or a file's absolute path, size and mtime), ``size``
and :data:`CACHE_VERSION`: the next run, ``evaluate`` or ``predict`` on the same rows decodes
nothing. The file is written to a temporary name and renamed (a killed run leaves no half
file under the key) and then memory-mapped, so a split larger than RAM still trains: the
loader's ``index_select`` reads only the pages of the rows of each batch.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import DataError, UserError
from hydranet.features.base import FEATURES, Columnar, FeatureGroup
from hydranet.params import PositiveInt

CACHE_VERSION = 1
"""Part of every cache key: bump it when the decoded pixels of the same file change."""
DEFAULT_SIZE = 64
_WHITE = (255, 255, 255)
CACHE_MIN_ROWS = 64
"""Tables of fewer rows are decoded in memory, not cached: quick anyway, and a server's
requests (or a notebook's few rows) would each leave a file behind."""
# rows decoded per step: bounds the pending futures of a large column
_CHUNK_ROWS = 4096

_decoded = 0
_decoded_lock = threading.Lock()


def decoded_count() -> int:
    """Images decoded by this process so far (what the cache saves; for tests and benchmarks)."""
    return _decoded


def cache_dir() -> Path:
    """Where decoded images are cached: ``images/`` under hydranet's data directory."""
    root = os.environ.get("HYDRANET_DATA_DIR") or "~/.cache/hydranet"
    return Path(root).expanduser() / "images"


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_path(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_bytes(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def decode(data: bytes | str | Path, size: int) -> np.ndarray:
    """One image (encoded bytes or a file) as ``[3, size, size]`` uint8 RGB on white.

    Raises Pillow's or the OS's error; :class:`ImageGroup` turns it into a DataError that
    names the column and row.
    """
    from PIL import Image

    global _decoded
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as img:
        img.load()
        if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA"):
            rgba = img.convert("RGBA")
            img = Image.new("RGBA", rgba.size, (*_WHITE, 255))
            img.alpha_composite(rgba)
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        out = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    with _decoded_lock:
        _decoded += 1
    return out


def _decode_into(out: np.ndarray, j: int, name: str, values: list, size: int, row: int) -> None:
    """Decode ``values[row]`` into ``out[row, j]``; a bad picture is a DataError naming it."""
    value = values[row]
    try:
        out[row, j] = decode(value, size)
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow's UnidentifiedImageError is an OSError; truncated data can raise ValueError
        # or SyntaxError from a plugin
        what = "the image bytes" if isinstance(value, bytes) else value
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"image column {name!r} row {row}: cannot decode {what}: {why}") from None


@FEATURES.register("image")
class ImageGroup(FeatureGroup):
    kind = "image"
    default_encoder = "cnn"
    path_params = ("root",)  # relative to the spec file's directory (Spec.absolute_paths)
    param_constraints = {"size": PositiveInt, "root": str | None}

    def __init__(
        self,
        name: str,
        columns: Sequence[str],
        size: int = DEFAULT_SIZE,
        root: str | None = None,
    ):
        super().__init__(name, columns)
        if int(size) < 1:
            raise ValueError(f"size must be at least 1; got {size}")
        self.size = int(size)
        self.root = None if root is None else str(root)
        self._fitted = False

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root}

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        if _is_path(type_) or _is_bytes(type_) or pa.types.is_null(type_):
            return None
        return (
            f"has type {type_}; an image column holds paths (strings) or the file's bytes (binary)"
        )

    # ------------------------------------------------------------ fitting
    def partial_fit(self, batch: Columnar) -> ImageGroup:
        return self  # nothing to learn from the pictures

    def finish(self) -> ImageGroup:
        self._fitted = True
        return self

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    # ------------------------------------------------------------ use
    def info(self) -> dict[str, Any]:
        return {"shape": [len(self.columns), 3, self.size, self.size]}

    def summary(self) -> str:
        return f"{self.size}x{self.size} RGB"

    def transform(self, table: Columnar) -> torch.Tensor:
        self._require_fitted()
        n, c, s = table.num_rows, len(self.columns), self.size
        if n == 0:
            return torch.empty((0, c, 3, s, s), dtype=torch.uint8)
        columns = []
        for name in self.columns:
            col = table.column(name)
            why = self.column_problem(name, col.type)
            if why:
                raise UserError(f"image column {name!r} {why}")
            columns.append((name, self.sources(col)))
        key = self._key(columns)  # also checks that every file is there, before any decoding
        if n < CACHE_MIN_ROWS:
            return torch.from_numpy(self._decode_all(columns, _white((n, c, 3, s, s))))
        path = cache_dir() / f"{key}.npy"
        if not path.is_file():
            try:
                self._write(path, columns, n)
            except OSError:
                # no cache where it should be (a read-only data directory, a full disk):
                # decode into memory; the run is slower the next time, not wrong
                return torch.from_numpy(self._decode_all(columns, _white((n, c, 3, s, s))))
        return _mapped(path)

    def sources(self, col: pa.ChunkedArray | pa.Array) -> list[bytes | str | None]:
        """What each row of one of the group's columns decodes from, as :meth:`transform`
        reads it: the image file's bytes (a binary column), or its file's absolute path (a
        string column: the path resolved against ``root``, else the working directory);
        None for a null (a white picture). :func:`decode` takes either."""
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        if pa.types.is_null(col.type):
            return [None] * len(col)
        values = col.to_pylist()
        if _is_bytes(col.type):
            return values
        base = Path(self.root).expanduser() if self.root is not None else Path.cwd()
        return [None if v is None else str((base / v).absolute()) for v in values]

    def _key(self, columns: list[tuple[str, list[bytes | str | None]]]) -> str:
        h = hashlib.sha256(f"hydranet-image v{CACHE_VERSION} size {self.size}\n".encode())
        for name, values in columns:
            h.update(f"column {len(values)}\n".encode())
            for i, v in enumerate(values):
                if v is None:
                    h.update(b"n")
                elif isinstance(v, bytes):
                    h.update(b"b%d:" % len(v))
                    h.update(v)
                else:
                    try:
                        st = os.stat(v)
                    except OSError as e:
                        raise DataError(
                            f"image column {name!r} row {i}: cannot read {v}: {e.strerror}"
                        ) from None
                    # path, size and mtime: an edited file is decoded again
                    h.update(f"p{v}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def _decode_all(self, columns: list[tuple[str, list]], out: np.ndarray) -> np.ndarray:
        """Every non-null row's picture into ``out [n, C, 3, S, S]`` (nulls stay as they are)."""
        # Pillow releases the GIL while it decodes and resizes: threads overlap the work
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for j, (name, values) in enumerate(columns):
                rows = [i for i, v in enumerate(values) if v is not None]
                for start in range(0, len(rows), _CHUNK_ROWS):
                    chunk = rows[start : start + _CHUNK_ROWS]
                    list(pool.map(partial(_decode_into, out, j, name, values, self.size), chunk))
        return out

    def _write(self, path: Path, columns: list[tuple[str, list]], n: int) -> None:
        s = self.size
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            # decoded straight into the file's pages: a split larger than RAM still fits
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(n, len(columns), 3, s, s)
            )
            out[...] = 255  # a null is a white picture
            self._decode_all(columns, out)
            out.flush()
            del out
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, Any]:
        return {}

    def load_fitted(self, state: dict[str, Any]) -> None:
        self._fitted = True

    @classmethod
    def example_table(cls, n: int, seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        from PIL import Image

        rng = np.random.default_rng(seed)

        def png(mode: str) -> bytes:
            rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(rgba, "RGBA").convert(mode).save(buf, format="PNG")
            return buf.getvalue()

        modes = ["RGB", "RGBA", "L", "P"]
        photo: list[bytes | None] = [png(modes[i % 4]) for i in range(n)]
        icon: list[bytes | None] = [png("RGBA") for _ in range(n)]
        photo[0] = None
        icon[1] = None
        table = pa.table(
            {"photo": pa.array(photo, pa.binary()), "icon": pa.array(icon, pa.binary())}
        )
        return table, {"size": 8}


def _white(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, 255, dtype=np.uint8)  # a null is a white picture


def _mapped(path: Path) -> torch.Tensor:
    """The cached array as a tensor over a memory map of the file.

    A read-only map (``mmap_mode="r"``) would make ``torch.from_numpy`` warn that the tensor
    is not writable; a copy-on-write map (``"c"``) is writable for torch, never writes the
    file, and still reads only the pages that are used (a batch's rows), not the whole split.
    """
    try:
        array = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as e:
        raise DataError(
            f"image cache {path} cannot be read ({e}); delete it to decode again"
        ) from None
    return torch.from_numpy(array)
