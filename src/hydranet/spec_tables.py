"""The Spec's plain tables that the layers below the Spec take as they are.

``[data]`` (:class:`DataSpec`, with the source and CSV options of :class:`SourceOptions`),
``[[tasks]]`` (:class:`TaskSpec`) and ``[[features]]`` (:class:`FeatureGroupSpec`): pydantic
models that import nothing of hydranet. They live here rather than in :mod:`hydranet.spec`
because the Spec checks its names against the registries of sources, task kinds and
feature kinds when it loads, so those must never import the Spec module (imports go one
way); :mod:`hydranet.spec` re-exports every name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Strings that mean "missing" in a CSV cell by default: the spellings pandas and
# spreadsheets write for a missing value. "?" (UCI's) and "-" are common too but are also
# real values often enough that a file using them says so with null_values.
CSV_NULL_VALUES = ("", "NA", "N/A", "n/a", "#N/A", "NULL", "null", "NaN", "nan", "None")


class CsvSpec(_Part):
    header: bool = Field(True, description="the first line of each file names the columns")
    column_names: list[str] | None = Field(
        None,
        description="the columns' names, in file order: for files without a header line (header = false), or in place of the header's names; header = false without them names the columns f0, f1, ...",
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator")
    strip_whitespace: bool = Field(
        True,
        description="strip surrounding whitespace from text cells (' >50K' reads as '>50K'); a cell of only spaces is then blank",
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(CSV_NULL_VALUES),
        description="cells that mean missing, in any column (compared after stripping); a blank cell is always missing, never the text ''",
    )


class SourceOptions(_Part):
    source: str = Field(
        "auto",
        description="where rows come from: auto (files for a path, frame for a pandas DataFrame or Arrow table, spark for a Spark DataFrame), files, frame, spark or 'pkg.mod:Source'",
    )
    source_params: dict[str, Any] = Field(
        default_factory=dict, description="parameters of a user's source ('pkg.mod:Source')"
    )
    format: Literal["auto", "parquet", "csv"] = "auto"
    csv: CsvSpec = Field(default_factory=CsvSpec, description="how CSV files are read")


class DataSpec(SourceOptions):
    dataset: str | None = Field(
        None,
        description="a bundled dataset ('census', 'emoji', 'synthetic'); fills paths and columns not given",
    )
    train: str | None = Field(
        None, description="training rows: a Parquet/CSV file, a directory or a glob"
    )
    validation: str | None = None
    test: str | None = None
    validation_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="split off from train when no validation file"
    )
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="split off from train when no test file"
    )
    split_seed: int = 0
    numeric: list[str] | Literal["*"] = Field(
        default_factory=list,
        description="numeric feature columns (the feature group 'numeric'); '*' = every column no label, other group or 'exclude' takes",
    )
    categorical: list[str] | Literal["*"] = Field(
        default_factory=list,
        description="categorical feature columns (the feature group 'categorical'); '*' as for numeric",
    )
    exclude: list[str] = Field(
        default_factory=list, description="columns a '*' group leaves out (ids, leaky columns)"
    )
    log1p: list[str] = Field(
        default_factory=list,
        description="numeric columns to transform with sign(x)*log1p(|x|) before scaling",
    )
    min_count: int = Field(
        1,
        ge=1,
        description="categories seen fewer times in train go to the out-of-vocabulary bucket",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="parameters of the bundled dataset generator"
    )
    streaming: bool = Field(
        False,
        description="read the training data in bounded chunks (out of core) instead of into memory; validation/test stay in memory",
    )
    shuffle_buffer_rows: int = Field(
        262_144,
        ge=1,
        description="streaming: rows shuffled together (row groups are also visited in a random order)",
    )
    chunk_rows: int = Field(65_536, ge=1, description="streaming: rows read and encoded at a time")


class FeatureGroupSpec(_Part):
    """One ``[[features]]`` group: named columns of one kind, one tensor in every batch."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the group's name: its key in a batch, its ONNX input and its encoder's key in model.encoders",
    )
    kind: str = Field(
        description="numeric, categorical, or a registered / 'pkg.mod:Group' feature kind"
    )
    columns: list[str] | Literal["*"] = Field(
        description="the group's columns; '*' = every column no label, other group or 'exclude' takes"
    )
    exclude: list[str] = Field(default_factory=list, description="columns a '*' group leaves out")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the kind's parameters (numeric: log1p; categorical: min_count)",
    )


class TaskSpec(_Part):
    name: str
    kind: str = Field(description="binary, multiclass, multilabel or regression")
    column: str | None = Field(None, description="label column (defaults to the task name)")
    columns: list[str] | None = Field(None, description="label columns of a multilabel task")
    positive: str | int | float | bool | list[str | int | float | bool] | None = Field(
        None,
        description="binary: the label value that means 1, or a list of them; every other value means 0",
    )
    loss: str | None = Field(
        None, description="loss override: bce, ce, mse, huber or 'pkg.mod:Loss'"
    )
    metrics: list[str] | None = Field(
        None, description="metrics to report (default: all of the kind's)"
    )
    weight: float = Field(1.0, ge=0.0, description="static loss weight")
    pos_weight: float | Literal["auto"] | None = Field(
        None, description="binary: weight of positives in the loss; 'auto' = negatives/positives"
    )
    huber_delta: float = Field(1.0, gt=0.0)
    standardize: bool = Field(
        True,
        description="regression: train on the standardized target; predictions and metrics stay in the original units",
    )

    @property
    def label_columns(self) -> list[str]:
        if self.columns:
            return list(self.columns)
        return [self.column or self.name]


class TuneRange(_Part):
    """A numeric range of a ``[tune.space]`` key: ints when ``low`` and ``high`` are both ints."""

    low: int | float
    high: int | float
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    step: int | float | None = Field(None, gt=0, description="a grid step (not with log)")

    @model_validator(mode="after")
    def _check(self) -> TuneRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("give either log or step, not both")
        if self.is_int and self.step is not None and not isinstance(self.step, int):
            raise ValueError(f"an integer range needs an integer step (got {self.step})")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))


_RANGE_KEYS = frozenset(TuneRange.model_fields)


class TuneSpec(_Part):
    """``[tune]``: what ``hydranet tune`` searches (``[tune.space]``) and how."""

    space: dict[str, TuneRange | list[Any]] = Field(
        description="spec key (as for --set: 'train.lr', 'model.params.num_experts') -> {low, high, log, step} or a list of choices",
    )
    metric: str = Field(
        "mean",
        description="'mean' (the mean over tasks of each one's validation auc, accuracy, macro_auc or r2), 'task.metric' or 'loss'",
    )
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="auto: from the metric (maximize 'mean' and AUCs, minimize losses)"
    )
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, description="the sampler's seed (trial k samples with seed + k)")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stops trials whose per-epoch validation metric lags the others"
    )
    pruner_startup_trials: int = Field(
        5, ge=0, description="median: finished trials before any trial is pruned"
    )
    pruner_warmup_epochs: int = Field(
        1, ge=0, description="median: epochs a trial trains before it may be pruned"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="trials to run first, each a table of space keys and values (a known-good configuration)",
    )
    heartbeat_s: int = Field(
        30,
        ge=1,
        description="a running trial's heartbeat; one silent for 2 heartbeats (its worker was killed) is failed and run again",
    )
    retries: int = Field(1, ge=0, description="times a trial whose worker died is run again")

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, value: Any) -> Any:
        # each entry is checked here, one message per key: pydantic's own errors for a union
        # (range or list) would name both members for every mistake
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: dict[str, Any]) -> None:
            # [tune.space] with unquoted dotted keys (train.lr = {...}) arrives as nested tables
            for key, sub in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(sub, dict) and sub and not set(sub) & _RANGE_KEYS:
                    walk(path, sub)
                else:
                    flat[path] = sub

        walk("", value)
        if not flat:
            raise ValueError(
                'give at least one key to search, e.g. "train.lr" = {low = 1e-4, high = 1e-2, log = true}'
            )
        problems = []
        for key, dist in flat.items():
            if isinstance(dist, list):
                if not dist:
                    problems.append(f"{key}: an empty list of choices")
            elif isinstance(dist, dict):
                try:
                    flat[key] = TuneRange.model_validate(dist)
                except ValidationError as e:
                    problems += [_range_problem(key, err) for err in e.errors()]
            else:
                problems.append(
                    f"{key}: expected {{low, high}} (and log or step) or a list of choices; got {dist!r}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return flat


def _range_problem(key: str, err: dict[str, Any]) -> str:
    where = ".".join([key, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key; allowed: {', '.join(sorted(_RANGE_KEYS))}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] != "missing" and not isinstance(err.get("input"), dict):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"
