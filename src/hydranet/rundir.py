"""The run directory: what a finished (or interrupted) training leaves behind.

``spec.json`` (resolved Spec), ``preprocessor.json`` (fitted feature groups),
``tasks.json`` (fitted label state), ``encoders.json`` (what data-fitted encoders
learned, e.g. bins), ``model.safetensors``, ``checkpoint.safetensors`` (full training
state), ``best.safetensors`` (early stopping), ``metrics.jsonl`` (one line per
epoch), ``final_metrics.json`` and, when splits were carved out of train,
``splits.parquet`` (columns ``split``, ``row``: the training table's row numbers of
each split), and, written last when a training finishes, ``manifest.json`` (sha256 and
size of every other file, checked whenever the run is loaded). JSON, safetensors and
Parquet only: nothing unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
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
    """``(spec, preprocessor, tasks, encoder_states)`` of a run directory: JSON only, no weights.

    A file that is JSON but not what hydranet wrote there (``[]``, another file's content)
    is a one-line UserError naming it, whatever the parser raised on it.
    """
    from hydranet.data.preprocess import Preprocessor
    from hydranet.spec import Spec
    from hydranet.tasks import build_task

    for name in (SPEC, PREPROCESSOR, TASKS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a complete hydranet run: {name} is missing")
    raw = read_json(path / SPEC)
    with _rebuilding(path / SPEC, "spec", raw):
        spec = Spec.from_dict(raw, source=str(path / SPEC))
    raw = read_json(path / PREPROCESSOR)
    with _rebuilding(path / PREPROCESSOR, "preprocessor", raw):
        prep = Preprocessor.from_dict(raw)
    states = read_json(path / TASKS)
    with _rebuilding(path / TASKS, "task state", states):
        tasks = [build_task(ts, states.get(ts.name)) for ts in spec.tasks]
        for t in tasks:
            # the fitted state is only read at prediction time: use it once now, so that a
            # missing or mistyped entry is reported here, naming the file
            t.to_arrow(t.predict(torch.zeros(1, t.out_dim)).numpy())
    encoder_states = read_encoder_states(path)
    unknown = [g for g in encoder_states if g not in prep.groups]
    if unknown:
        raise UserError(
            f"{path / ENCODERS} is not a valid hydranet encoder state: {unknown[0]!r} is not a "
            f"feature group of the run (groups: {', '.join(prep.groups)})"
        )
    return spec, prep, tasks, encoder_states


def _check_object(path: Path, what: str, raw: Any) -> None:
    if not isinstance(raw, dict):
        found = _JSON_NAMES.get(type(raw), type(raw).__name__)
        raise UserError(
            f"{path} is not a valid hydranet {what}: expected a JSON object, found {found}"
        )


@contextlib.contextmanager
def _rebuilding(path: Path, what: str, raw: Any) -> Iterator[None]:
    """Turns any failure to rebuild an object from a run file into one line naming the file."""
    _check_object(path, what, raw)
    try:
        yield
    except Exception as e:
        if isinstance(e, UserError) and str(path) in str(e):
            raise  # already names the file (the Spec's own errors do)
        first = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise UserError(f"{path} is not a valid hydranet {what}: {first}") from None


_JSON_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip


def read_encoder_states(path: Path) -> dict[str, Any]:
    """What the run's data-fitted encoders learned (``encoders.json``); runs written before
    it existed have only encoders that learn nothing from data."""
    if not (path / ENCODERS).is_file():
        return {}
    states = read_json(path / ENCODERS)
    _check_object(path / ENCODERS, "encoder state", states)
    return states


# ---------------------------------------------------------------- manifest
_MANIFEST_FORMAT = "hydranet-manifest"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _manifested(out: Path) -> list[Path]:
    # the checkpoint changes on every resume, temporary files are in flight, dot files are
    # probes and editors' droppings: none of them is part of the finished run
    return sorted(
        p
        for p in out.iterdir()
        if p.is_file()
        and p.name not in (MANIFEST, CHECKPOINT)
        and not p.name.endswith(".tmp")
        and not p.name.startswith(".")
    )


def finished_files(out: Path) -> list[Path]:
    """The files a copy of the finished run must hold: those the manifest lists (or would
    list) and the manifest itself; not the checkpoint (training state, not the model)."""
    out = Path(out)
    return _manifested(out) + ([out / MANIFEST] if (out / MANIFEST).is_file() else [])


def write_manifest(out: Path, names: list[str] | None = None) -> None:
    """``manifest.json``: sha256 and size of every file of the run (of ``names`` only, when
    given, keeping the others' entries: an export adding ``model.onnx``). Written atomically,
    after everything it lists."""
    out = Path(out)
    files: dict[str, dict[str, Any]] = {}
    if names is not None:
        files = _read_manifest(out) or {}
        paths = [out / n for n in names]
    else:
        paths = _manifested(out)
    for p in paths:
        files[p.name] = {"sha256": file_digest(p), "bytes": p.stat().st_size}
    write_json(
        out / MANIFEST,
        {"format": _MANIFEST_FORMAT, "version": 1, "files": dict(sorted(files.items()))},
    )


def _read_manifest(path: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's ``{file: {"sha256", "bytes"}}``, or None when the run has none."""
    if not (path / MANIFEST).is_file():
        return None
    raw = read_json(path / MANIFEST)
    files = raw.get("files") if isinstance(raw, dict) else None
    ok = (
        isinstance(raw, dict)
        and raw.get("format") == _MANIFEST_FORMAT
        and isinstance(files, dict)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("sha256"), str)
            and isinstance(e.get("bytes"), int)
            and Path(name).name == name  # a plain file of the run, never a path out of it
            for name, e in files.items()
        )
    )
    if not ok:
        raise UserError(
            f"{path / MANIFEST} is not a valid hydranet manifest: the file was corrupted or changed after training"
        )
    return files


def verify_run(path: Path, names: list[str] | None = None) -> None:
    """Check the run's files (those of ``names`` the manifest lists, or all it lists) against
    ``manifest.json``; a run without one (older, or a training that has not finished) passes."""
    path = Path(path)
    files = _read_manifest(path)
    if files is None:
        return
    for name, entry in files.items():
        if names is not None and name not in names:
            continue
        p = path / name
        if not p.is_file():
            raise UserError(
                f"{path}: {name} is listed in the run's manifest but missing: the run is incomplete; "
                "restore the file or train again"
            )
        size = p.stat().st_size
        if size != entry["bytes"]:
            why = f"size differs: {size:,} bytes, {entry['bytes']:,} in the manifest"
        elif file_digest(p) != entry["sha256"]:
            why = "sha256 differs"
        else:
            continue
        raise UserError(
            f"{path}: {name} does not match the run's manifest ({why}): the file was corrupted "
            "or changed after training"
        )


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
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid JSON lines: {str(e).splitlines()[0]}") from None
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON lines (line {i}): {e}") from None
        if record is not None:
            records.append(record)
    return records


def truncate_metrics(out: Path, keep_before_epoch: int) -> None:
    """On resume, drop epoch lines written after the checkpoint being resumed from."""
    kept = [r for r in read_metrics(out) if r["epoch"] <= keep_before_epoch]
    tmp = out / (METRICS + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, out / METRICS)
