"""From a Spec to fitted tasks, a fitted preprocessor and prepared splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from hydranet.data.loader import TensorData, build_tensor_data
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import load_splits, resolve_dataset
from hydranet.errors import DataError, SpecError
from hydranet.spec import Spec
from hydranet.tasks import Task, build_task


@dataclass
class Split:
    """One split, prepared: tensors for the model and the raw labels for metrics."""

    data: TensorData
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    # the training table's row numbers of this split, when it was carved out of train
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data)


def encode_split(table: pa.Table, preprocessor: Preprocessor, tasks: list[Task]) -> Split:
    data = build_tensor_data(table, preprocessor, tasks)
    labels, masks = {}, {}
    for t in tasks:
        labels[t.name], masks[t.name] = t.encode(table)
    return Split(data=data, labels=labels, masks=masks)


def resolve_spec(spec: Spec) -> Spec:
    """The Spec with a bundled dataset's paths and columns filled in."""
    data = spec.data if spec.data.dataset is None else resolve_dataset(spec.data)
    resolved = spec.model_copy(update={"data": data})
    if not data.train:
        raise SpecError(
            [
                (
                    "data.train",
                    "no training data: give 'train' (a file, directory or glob) or a bundled 'dataset'",
                )
            ]
        )
    if not data.numeric and not data.categorical:
        raise SpecError(
            [("data.numeric", "no feature columns: list 'numeric' and/or 'categorical' columns")]
        )
    overlap = set(data.numeric) & set(data.categorical)
    if overlap:
        raise SpecError(
            [
                (
                    "data.categorical",
                    f"column(s) listed as both numeric and categorical: {', '.join(sorted(overlap))}",
                )
            ]
        )
    labels = {c for t in spec.tasks for c in t.label_columns}
    leak = labels & (set(data.numeric) | set(data.categorical))
    if leak:
        raise SpecError(
            [("data", f"label column(s) also used as features: {', '.join(sorted(leak))}")]
        )
    bad_log = set(data.log1p) - set(data.numeric)
    if bad_log:
        raise SpecError([("data.log1p", f"not numeric feature(s): {', '.join(sorted(bad_log))}")])
    return resolved


def needed_columns(spec: Spec) -> list[str]:
    cols = list(spec.data.numeric) + list(spec.data.categorical)
    for t in spec.tasks:
        cols += [c for c in t.label_columns if c not in cols]
    return cols


def prepare(spec: Spec) -> tuple[list[Task], Preprocessor, dict[str, Split]]:
    """Load splits, fit tasks and the preprocessor on train, encode every split.

    With ``data.streaming`` the 'train' entry is a :class:`~hydranet.data.stream.StreamingSplit`
    (fitted in one streaming pass, never loaded whole) and validation/test are in memory.
    """
    if spec.data.streaming:
        return prepare_streaming(spec)
    tables, rows = load_splits(spec.data, needed_columns(spec), with_rows=True)
    train = tables["train"]
    tasks = [build_task(ts).fit(train) for ts in spec.tasks]
    for t in tasks:
        _, mask = t.encode(train)
        if not mask.any():
            raise DataError(
                f"task {t.name!r}: label column {t.spec.label_columns[0]!r} has no labeled rows in the training data"
            )
    prep = Preprocessor(
        spec.data.numeric,
        spec.data.categorical,
        log1p=spec.data.log1p,
        min_count=spec.data.min_count,
    ).fit(train)
    splits = {name: encode_split(table, prep, tasks) for name, table in tables.items()}
    for name, ids in rows.items():
        splits[name].rows = ids
    return tasks, prep, splits


def split_rows(splits: dict) -> dict[str, np.ndarray]:
    """The row ids of the splits carved out of train (for ``rundir.write_split_rows``)."""
    return {
        name: s.rows for name, s in splits.items() if isinstance(s, Split) and s.rows is not None
    }


def prepare_streaming(spec: Spec) -> tuple[list[Task], Preprocessor, dict]:
    from hydranet.data.sources import read_table
    from hydranet.data.stream import open_streaming

    data = resolve_dataset(spec.data)
    fractions = [
        f"data.{s}_fraction"
        for s in ("validation", "test")
        if getattr(data, f"{s}_fraction") > 0 and not getattr(data, s)
    ]
    if fractions:
        raise SpecError(
            [
                (
                    fractions[0],
                    "cannot carve a split out of streamed training data; give the split as its own file (data.validation / data.test)",
                )
            ]
        )
    columns = list(dict.fromkeys(needed_columns(spec)))
    tasks = [build_task(ts) for ts in spec.tasks]
    prep = Preprocessor(data.numeric, data.categorical, log1p=data.log1p, min_count=data.min_count)
    train = open_streaming(
        data.train,
        data.format,
        columns,
        prep,
        tasks,
        shuffle_buffer_rows=data.shuffle_buffer_rows,
        chunk_rows=data.chunk_rows,
    )
    splits: dict = {"train": train}
    for name in ("validation", "test"):
        path = getattr(data, name)
        if path:
            splits[name] = encode_split(read_table(path, data.format, columns), prep, tasks)
    return tasks, prep, {s: splits[s] for s in ("train", "validation", "test") if s in splits}
