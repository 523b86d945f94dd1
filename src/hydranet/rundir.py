"""The run directory: what a finished (or interrupted) training leaves behind.

``spec.json`` (resolved Spec), ``preprocessor.json`` (fitted feature groups),
``tasks.json`` (fitted label state), ``encoders.json`` (what data-fitted encoders
learned, e.g. bins), ``model.safetensors``, ``checkpoint.safetensors`` (full training
state), ``best.safetensors`` (early stopping), ``metrics.jsonl`` (one line per
epoch), ``final_metrics.json`` and, when splits were carved out of train,
``splits.parquet`` (columns ``split``, ``row``: the training table's row numbers of
each split). JSON, safetensors and Parquet only: nothing unpickles.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydranet.errors import UserError

SPEC = "spec.json"
PREPROCESSOR = "preprocessor.json"
TASKS = "tasks.json"
ENCODERS = "encoders.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
FINAL = "final_metrics.json"
SPLITS = "splits.parquet"
MANIFEST = "manifest.json"
FORMAT_VERSION = "1"


def prepare_dir(out: Path, *, resume: bool) -> Path:
    """Create (or, for resume, find) the run directory; fail early if it is not writable.

    A directory holding only what a run writes before its first checkpoint (no checkpoint,
    no weights) holds nothing of value: it is cleared and started afresh, saying so.
    """
    if resume:
        if not (out / SPEC).is_file():
            raise UserError(f"cannot resume: {out} is not a hydranet run directory (no {SPEC})")
        _check_writable(out, f"cannot resume: run directory {out} is not writable")
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    restart = False
    if out.is_dir() and any(out.iterdir()):
        if (out / SPEC).exists():
            if not never_checkpointed(out):
                raise UserError(
                    f"output directory {out} already holds a run; pass --resume to continue it or choose another --out"
                )
            restart = True
        else:
            raise UserError(
                f"output directory {out} is not empty; choose an empty or new directory"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output directory {out} is not writable: {e.strerror or e}") from None
    _check_writable(out, f"output directory {out} is not writable")
    if restart:
        try:
            for p in out.iterdir():
                p.unlink()
        except OSError as e:
            raise UserError(f"cannot clear {out} to start afresh: {e.strerror or e}") from None
        print(
            f"hydranet: {out} holds a run that stopped before its first checkpoint; starting it afresh",
            file=sys.stderr,
        )
    return out


# what a run writes before its first checkpoint (and the temporary names of its atomic writes)
_BEFORE_CHECKPOINT = {SPEC, PREPROCESSOR, TASKS, ENCODERS, METRICS, SPLITS, BEST, MANIFEST}


def never_checkpointed(out: Path) -> bool:
    """Whether ``out`` holds only a run's files from before its first checkpoint: no
    checkpoint, no weights and nothing else (a user's file, an export) that clearing it
    would lose."""
    for p in out.iterdir():
        name = p.name.removesuffix(".tmp")
        if not p.is_file() or name not in _BEFORE_CHECKPOINT:
            return False
    return True


def _check_writable(out: Path, message: str) -> None:
    try:
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{message}: {e.strerror or e}; nothing was written") from None


def _clean(obj: Any) -> Any:
    # JSON has no NaN; an undefined metric (AUC of a split with one class) is null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    os.replace(tmp, path)


def write_meta(out: Path, spec, preprocessor, tasks, encoder_states=None) -> None:
    write_json(out / SPEC, spec.to_dict())
    write_json(out / PREPROCESSOR, preprocessor.to_dict())
    write_json(out / TASKS, {t.name: t.state for t in tasks})
    write_json(out / ENCODERS, encoder_states or {})


def read_json(path: Path) -> Any:
    """A run file's JSON; a one-line UserError when it is not JSON (or not UTF-8)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None


def read_meta(path: Path):
    """``(spec, preprocessor, tasks, encoder_states)`` of a run directory: JSON only, no weights."""
    from hydranet.data.preprocess import Preprocessor
    from hydranet.spec import Spec
    from hydranet.tasks import build_task

    for name in (SPEC, PREPROCESSOR, TASKS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a complete hydranet run: {name} is missing")
    spec = Spec.from_dict(read_json(path / SPEC), source=str(path / SPEC))
    prep = Preprocessor.from_dict(read_json(path / PREPROCESSOR))
    states = read_json(path / TASKS)
    tasks = [build_task(ts, states.get(ts.name)) for ts in spec.tasks]
    return spec, prep, tasks, read_encoder_states(path)


def read_encoder_states(path: Path) -> dict[str, Any]:
    """What the run's data-fitted encoders learned (``encoders.json``); runs written before
    it existed have only encoders that learn nothing from data."""
    return read_json(path / ENCODERS) if (path / ENCODERS).is_file() else {}


def write_split_rows(out: Path, row_ids: dict[str, np.ndarray]) -> None:
    """``splits.parquet``: one (split, row) line per row of each split carved out of train.

    Nothing is written when no split was carved (every split is its own file).
    """
    if not row_ids:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(row_ids)
    table = pa.table(
        {
            "split": pa.array(np.repeat(names, [len(row_ids[s]) for s in names]), pa.string()),
            "row": pa.array(np.concatenate([row_ids[s] for s in names]), pa.int64()),
        }
    )
    tmp = out / (SPLITS + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out / SPLITS)


def read_split_rows(out: Path) -> dict[str, np.ndarray]:
    """The row numbers of each carved split, as :func:`write_split_rows` wrote them ({} if none)."""
    path = out / SPLITS
    if not path.exists():
        return {}
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    split = table.column("split")
    return {
        s: table.column("row").filter(pc.equal(split, s)).to_numpy()
        for s in pc.unique(split).to_pylist()
    }


def write_weights(out: Path, model: torch.nn.Module) -> None:
    from hydranet.train.state_io import atomic_save_tensors

    atomic_save_tensors(
        model.state_dict(),
        out / WEIGHTS,
        metadata={"format": "hydranet", "version": FORMAT_VERSION},
    )


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(_clean(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out: Path, keep_before_epoch: int) -> None:
    """On resume, drop epoch lines written after the checkpoint being resumed from."""
    kept = [r for r in read_metrics(out) if r["epoch"] <= keep_before_epoch]
    tmp = out / (METRICS + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, out / METRICS)
