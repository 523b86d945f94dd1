"""From a Spec to fitted tasks, a fitted preprocessor and prepared splits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from hydranet.data.loader import TensorData, build_tensor_data
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import dataset_features, load_splits, resolve_dataset
from hydranet.errors import DataError, SpecError, column_report
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
    encoded = {t.name: t.encode(table) for t in tasks}  # once: the tensors and the metrics'
    data = build_tensor_data(table, preprocessor, tasks, encoded)
    labels = {name: values for name, (values, _) in encoded.items()}
    masks = {name: mask for name, (_, mask) in encoded.items()}
    return Split(data=data, labels=labels, masks=masks)


def resolve_spec(spec: Spec) -> Spec:
    """The Spec with a bundled dataset's paths and columns filled in, every ``"*"`` feature
    group expanded to its columns, and every feature and label column checked against the
    training data's schema, all problems at once (one line each)."""
    data = spec.data if spec.data.dataset is None else resolve_dataset(spec.data)
    resolved = spec.model_copy(update={"data": data})
    if data is not spec.data and not (spec.features or spec.data.numeric or spec.data.categorical):
        # no feature column named: the bundled dataset's default groups (image, text) too
        resolved = resolved.model_copy(update={"features": dataset_features(spec.data)})
    if not data.train:
        raise SpecError(
            [
                (
                    "data.train",
                    "no training data: give 'train' (a file, directory or glob) or a bundled 'dataset'",
                )
            ]
        )
    groups = resolved.feature_groups()
    if not groups:
        raise SpecError(
            [
                (
                    "data.numeric",
                    "no feature columns: list 'numeric' and/or 'categorical' columns, or [[features]] groups",
                )
            ]
        )
    labels = list(dict.fromkeys(c for t in spec.tasks for c in t.label_columns))
    schema = _train_schema(data)
    resolved = _expand_stars(resolved, schema.names, labels)
    groups = resolved.feature_groups()
    problems: list[tuple[str, str]] = [
        (
            f"model.encoders.{key}",
            f"no feature group {key!r}; groups: {', '.join(g.name for g in groups)}",
        )
        for key in resolved.model.encoders
        if key not in {g.name for g in groups}
    ]
    owner: dict[str, str] = {}
    for g in groups:
        for c in g.columns:
            if c in owner:
                problems.append(
                    (
                        "features",
                        f"column {c!r} is in feature groups {owner[c]!r} and {g.name!r}; keep it in one",
                    )
                )
            owner.setdefault(c, g.name)
    leak = [c for c in labels if c in owner]
    if leak:
        problems.append(("data", f"label column(s) also used as features: {', '.join(leak)}"))
    if problems:
        raise SpecError(problems)
    try:
        # the groups' own parameter checks (log1p of a column outside the group, ...)
        pre = Preprocessor.from_specs(groups)
    except DataError as e:
        raise SpecError([("features", str(e))]) from None
    missing = pre.problems(schema, f"training data ({data.train})")
    missing += [
        f"label column {c!r} not found in the training data ({data.train})"
        for c in labels
        if c not in schema.names
    ]
    if missing:
        raise DataError(column_report(missing, schema.names, str(data.train)))
    return resolved


# train.batch_size / train.epochs = "auto". The batch is the power of two nearest
# rows / AUTO_ROWS_PER_STEP within AUTO_BATCH: an epoch of small data has ~128 steps or more,
# and a large table keeps the batch that trains fast. Measured on 30,000 census training rows
# (benchmarks/census_auto_sizes.py, 3 seeds, early stopping): test income AUC 0.9379 with
# batch 1024 whether for 30 epochs or up to 100, 0.9388-0.9390 with 512, 256 (this rule) and
# 128; the batch, not the epochs, held 1024 back. Epochs are enough for about AUTO_STEPS steps
# in all, within AUTO_EPOCHS; with early stopping only a cap.
AUTO_ROWS_PER_STEP = 128
AUTO_BATCH = (64, 1024)
AUTO_STEPS = 8000
AUTO_EPOCHS = (10, 100)


def auto_batch_size(rows: int) -> int:
    """``train.batch_size = "auto"`` for ``rows`` training rows (the global batch)."""
    lo, hi = AUTO_BATCH
    if rows <= lo * AUTO_ROWS_PER_STEP:
        return lo
    return min(hi, 2 ** round(math.log2(rows / AUTO_ROWS_PER_STEP)))


def auto_epochs(rows: int, batch_size: int) -> int:
    """``train.epochs = "auto"`` for ``rows`` training rows in batches of ``batch_size``."""
    steps = max(1, math.ceil(rows / batch_size))
    lo, hi = AUTO_EPOCHS
    return min(hi, max(lo, math.ceil(AUTO_STEPS / steps)))


def resolve_auto_sizes(spec: Spec, rows: int) -> tuple[Spec, list[str]]:
    """The Spec with an ``"auto"`` train.batch_size / train.epochs replaced by its number
    for ``rows`` training rows, and one line per choice saying what and why (for ``hydranet
    plan`` and the run's log). The numbers go into the run's spec.json, so a resume never
    decides them again."""
    cfg = spec.train
    update: dict[str, int] = {}
    notes: list[str] = []
    batch = cfg.batch_size
    if batch == "auto":
        batch = update["batch_size"] = auto_batch_size(rows)
        notes.append(f"train.batch_size auto -> {batch} ({rows:,} training rows)")
    if cfg.epochs == "auto":
        epochs = update["epochs"] = auto_epochs(rows, batch)
        steps = math.ceil(rows / batch)
        notes.append(
            f"train.epochs auto -> {epochs} ({steps:,} steps an epoch of {batch}; "
            f"about {AUTO_STEPS:,} steps in all, within {AUTO_EPOCHS[0]}-{AUTO_EPOCHS[1]} epochs"
            + (", a cap: early stopping is on" if cfg.early_stopping else "")
            + ")"
        )
    if not update:
        return spec, notes
    return spec.model_copy(update={"train": cfg.model_copy(update=update)}), notes


def _train_schema(data) -> pa.Schema:
    from hydranet.data.sources import open_source

    return open_source(data.train, data).schema


def _expand_stars(spec: Spec, names: list[str], labels: list[str]) -> Spec:
    """Every ``"*"`` group as the columns no label, other group or ``exclude`` takes."""
    groups = spec.feature_groups()
    if not any(g.columns == "*" for g in groups):
        return spec
    stars = [g.name for g in groups if g.columns == "*"]
    if len(stars) > 1:
        raise SpecError(
            [("features", f"only one feature group can take '*'; found: {', '.join(stars)}")]
        )
    taken = set(labels) | {c for g in groups if g.columns != "*" for c in g.columns}
    star = next(g for g in groups if g.columns == "*")
    taken |= set(star.exclude)
    columns = [c for c in names if c not in taken]
    if not columns:
        raise SpecError([("features", f"feature group {star.name!r} ('*') has no columns left")])
    features = [
        g.model_copy(update={"columns": columns}) if g.columns == "*" else g for g in spec.features
    ]
    data = spec.data
    for key in ("numeric", "categorical"):
        if getattr(data, key) == "*":
            data = data.model_copy(update={key: columns})
    return spec.model_copy(update={"features": features, "data": data})


def needed_columns(spec: Spec) -> list[str]:
    cols = [c for g in spec.feature_groups() for c in g.columns]
    for t in spec.tasks:
        cols += [c for c in t.label_columns if c not in cols]
    return list(dict.fromkeys(cols))


def prepare(spec: Spec) -> tuple[list[Task], Preprocessor, dict[str, Split]]:
    """Load splits, fit tasks and the preprocessor on train, encode every split.

    With ``data.streaming`` the 'train' entry is a :class:`~hydranet.data.stream.StreamingSplit`
    (fitted in one streaming pass, never loaded whole) and validation/test are in memory.
    """
    if spec.data.streaming:
        return prepare_streaming(spec)
    tables, rows = load_splits(spec.data, needed_columns(spec), with_rows=True)
    train = tables["train"]
    # a task's fit refuses training labels with no labeled row (or one class, ...)
    tasks = [build_task(ts).fit(train) for ts in spec.tasks]
    prep = Preprocessor.from_specs(spec.feature_groups()).fit(train)
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
    columns = needed_columns(spec)
    tasks = [build_task(ts) for ts in spec.tasks]
    prep = Preprocessor.from_specs(spec.feature_groups())
    train = open_streaming(
        data.train,
        data.format,
        columns,
        prep,
        tasks,
        shuffle_buffer_rows=data.shuffle_buffer_rows,
        chunk_rows=data.chunk_rows,
        options=data,
    )
    splits: dict = {"train": train}
    for name in ("validation", "test"):
        path = getattr(data, name)
        if path:
            splits[name] = encode_split(read_table(path, columns=columns, data=data), prep, tasks)
    return tasks, prep, {s: splits[s] for s in ("train", "validation", "test") if s in splits}
