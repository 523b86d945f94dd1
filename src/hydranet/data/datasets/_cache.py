"""What the fetched datasets share: their cache of Parquet splits, built once and written
atomically, and the one line that says what is being fetched (the first use takes seconds
with nothing else on screen)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")


def local_copy(given: Path | None, env: str) -> Path | None:
    """The local copy of a dataset's package: the argument, else ``$env``, else None (fetch)."""
    return given or (Path(os.environ[env]) if os.environ.get(env) else None)


def cached_splits(
    data_dir: Path,
    name: str,
    build: Callable[[], dict[str, pa.Table]],
    announce: Callable[[Path], str],
) -> dict[str, Path]:
    """``{split: Parquet path}`` under ``data_dir/name``; on first use the line
    ``announce(out_dir)`` is said and ``build()``'s tables are written."""
    out_dir = Path(data_dir) / name
    paths = {s: out_dir / f"{s}.parquet" for s in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    say(announce(out_dir))
    for split, table in build().items():
        _write_atomic(table, paths[split])
    return paths


def say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once, not once per rank of a distributed run
        print(f"hydranet: {message}", file=sys.stderr, flush=True)


def _write_atomic(table: pa.Table, path: Path) -> None:
    # a kill mid-write leaves only the temporary file; the cache check never sees it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
