"""The Spec: one experiment as one validated document (TOML or YAML).

Every field has a default where a sensible one exists. Unknown keys are
rejected, and all problems are collected and raised together as one
:class:`~hydranet.errors.SpecError`, each with its key path and what is allowed.
Registry-backed names (architecture, task kind, balance method, loss) and the
architecture's own hyper-parameters are checked against what they build.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from hydranet.errors import SpecError, UserError
from hydranet.spec_tables import (  # noqa: F401  (the tables are re-exported from here)
    CSV_NULL_VALUES,
    CsvSpec,
    DataSpec,
    FeatureGroupSpec,
    SourceOptions,
    TaskSpec,
    TuneSpec,
    _Part,
)


class EarlyStopping(_Part):
    metric: str = Field(
        description="'task.metric' to watch on the validation split, e.g. 'income.auc'; 'loss' for the mean validation loss; 'mean' for the mean over tasks of each task's first metric (all higher-is-better, or all lower)"
    )
    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")
    mode: Literal["auto", "max", "min"] = Field("auto", description="'auto' picks from the metric")
    min_delta: float = Field(0.0, ge=0.0)


class EncoderSpec(_Part):
    name: str = Field(
        description="an encoder of the ENCODERS registry (embedding, identity, linear, piecewise_linear, periodic) or 'pkg.mod:Encoder'"
    )
    params: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(_Part):
    architecture: str = Field(
        "mmoe",
        description="trunk: single_task, shared_bottom, mmoe, omoe, cgc, ple, cross_stitch, tabm or 'pkg.mod:Trunk'",
    )
    embedding_dim: int = Field(4, ge=1)
    embedding_init_std: float = Field(
        0.05,
        gt=0.0,
        description="std of the normal initialisation of the categorical embeddings (nn.Embedding's own: 1.0)",
    )
    head_init_scale: float | None = Field(
        None,
        ge=0.0,
        description="the towers' output layers start at PyTorch's default initialisation times this (0: every prediction starts at its output bias); unset: the trunk's own default, 0.1 for the gated expert mixtures (mmoe, omoe, cgc, ple) and 1.0 for the others; with plain SGD and 0.1 a larger lr makes up for the small first gradients; multiclass heads of a gated trunk learn faster with 1.0 (MultiFashion MMoE: +9 points)",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="the architecture's hyper-parameters"
    )
    tower: list[int] = Field(
        default_factory=lambda: [8], description="hidden sizes of each task tower"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    encoders: dict[str, EncoderSpec] = Field(
        default_factory=dict,
        description="the encoder of a feature group, by group name (default: the group kind's own: embedding for categorical, identity for numeric)",
    )
    fusion: str = Field(
        "concat", description="how the groups' vectors become the trunk input (FUSIONS registry)"
    )
    fusion_params: dict[str, Any] = Field(
        default_factory=dict, description="the fusion's parameters, e.g. gated: { dim = 32 }"
    )


class ScheduleSpec(_Part):
    kind: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


class TrainSpec(_Part):
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="passes over the training data; auto: from the training row count (hydranet plan says what)",
    )
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="rows per step (the global batch under --nproc); auto: from the training row count",
    )
    eval_batch_size: int = Field(65536, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    seed: int = 0
    device: str = Field(
        "auto",
        description="auto, cpu, cuda or cuda:N; auto is CUDA when there is one, unless "
        "$HYDRANET_DEVICE names another (HYDRANET_DEVICE=cpu keeps runs on the CPU)",
    )
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool | Literal["default", "reduce-overhead", "max-autotune"] = Field(
        False, description="torch.compile the model's forward: true (default mode) or a mode"
    )
    cuda_graph: Literal["auto", "on", "off"] = Field(
        "auto",
        description="capture the whole training step as one CUDA graph (auto: on CUDA when the run allows it)",
    )
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None,
        description="torch intra-op threads on CPU (default: torch's count); 'auto' times a few "
        "steps each epoch on all threads and on one, and trains on the faster",
    )
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int = Field(
        0, ge=0, description="steps between checkpoints; 0 = at the end of each epoch"
    )
    deterministic: bool = Field(
        False,
        description="deterministic kernels only (torch.use_deterministic_algorithms): on CUDA "
        "the same seed gives the same weights bit for bit (sums by atomics, such as the "
        "embedding gradient, are otherwise reordered run to run); slower on CUDA",
    )
    shard_encoders: list[str] = Field(
        default_factory=list,
        description="feature groups whose encoders are sharded across ranks with FSDP under --nproc (the rest stays DDP)",
    )


class BalanceSpec(_Part):
    method: str = Field("ew", description="loss weighting or gradient aggregation method")
    params: dict[str, Any] = Field(default_factory=dict)
    rep_grad: bool = Field(
        False, description="gradient methods: use gradients w.r.t. the shared representation"
    )


def _relative(value: Any) -> bool:
    return (
        isinstance(value, str)
        and bool(value)
        and "://" not in value
        and not Path(value).is_absolute()
    )


def _joined(base: str | Path, value: str) -> str:
    # "~/..." is the user's home, as a shell reads it, not a folder named ~ beside the spec
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(base).absolute() / path)


class Spec(_Part):
    name: str = "experiment"
    data: DataSpec
    features: list[FeatureGroupSpec] = Field(
        default_factory=list,
        description="feature groups; data.numeric / data.categorical are a shortcut for the groups 'numeric' and 'categorical'",
    )
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    tune: TuneSpec | None = Field(
        None, description="what 'hydranet tune' searches; training ignores it"
    )

    @model_validator(mode="after")
    def _unique_tasks(self) -> Spec:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dup)}")
        return self

    def feature_groups(self) -> list[FeatureGroupSpec]:
        """The ``[[features]]`` groups, then the shortcut groups of ``data.categorical`` and
        ``data.numeric`` (in that order, the layout of earlier versions)."""
        groups = list(self.features)
        d = self.data
        if d.categorical:
            params = {"min_count": d.min_count} if d.min_count != 1 else {}
            groups.append(
                FeatureGroupSpec(
                    name="categorical",
                    kind="categorical",
                    columns=d.categorical,
                    exclude=d.exclude if d.categorical == "*" else [],
                    params=params,
                )
            )
        if d.numeric:
            groups.append(
                FeatureGroupSpec(
                    name="numeric",
                    kind="numeric",
                    columns=d.numeric,
                    exclude=d.exclude if d.numeric == "*" else [],
                    params={"log1p": list(d.log1p)} if d.log1p else {},
                )
            )
        return groups

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path: str | Path) -> Spec:
        path = Path(path)
        if not path.is_file():
            raise SpecError([("", f"spec file not found: {path}")])
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                raw = yaml.safe_load(text) or {}
            elif path.suffix == ".json":
                raw = json.loads(text)
            else:
                raw = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
            where, msg = _parse_error(e)
            raise SpecError([("", f"cannot parse: {msg}")], source=f"{path}{where}") from None
        except UnicodeDecodeError as e:
            raise SpecError(
                [("", f"not UTF-8 text (byte {e.start}); a spec is a TOML, YAML or JSON file")],
                source=str(path),
            ) from None
        if not isinstance(raw, dict):
            raise SpecError([("", "the top level must be a table of keys")], source=str(path))
        # relative data paths mean the spec file's directory, wherever hydranet is run from
        return cls.from_dict(raw, source=str(path)).absolute_paths(path.absolute().parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | None = None) -> Spec:
        try:
            spec = cls.model_validate(raw)
        except ValidationError as e:
            raise SpecError(_problems(e, cls), source=source) from None
        problems = _check_numbers(raw) or spec._check_references()
        if problems:
            raise SpecError(problems, source=source)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def absolute_paths(self, base: str | Path) -> Spec:
        """A copy whose relative data paths (``data.train``, ``validation``, ``test``: files,
        directories or globs) are joined to ``base``; absolute ones, URIs and the location
        strings of other sources (a user's source may take a table name) are left as they are."""
        spec = self._absolute_feature_paths(base)._absolute_encoder_paths(base)
        data = spec.data
        if data.source not in ("auto", "files"):
            return spec
        update = {
            key: _joined(base, value)
            for key in ("train", "validation", "test")
            if _relative(value := getattr(data, key))
        }
        if not update:
            return spec
        return spec.model_copy(update={"data": data.model_copy(update=update)})

    def _absolute_feature_paths(self, base: str | Path) -> Spec:
        # feature params that a kind declares to be file paths (``path_params``: the text
        # kind's tokenizer.json) mean the spec file's directory too
        from hydranet.features import FEATURES

        groups = []
        for g in self.features:
            try:
                keys = getattr(FEATURES.get(g.kind), "path_params", ())
            except UserError:  # an unknown kind: the spec's own checks name it
                keys = ()
            update = {k: _joined(base, g.params[k]) for k in keys if _relative(g.params.get(k))}
            groups.append(g.model_copy(update={"params": {**g.params, **update}}) if update else g)
        if all(a is b for a, b in zip(groups, self.features, strict=True)):
            return self
        return self.model_copy(update={"features": groups})

    def _absolute_encoder_paths(self, base: str | Path) -> Spec:
        # encoder params that the encoder declares to be file paths (``path_params``: a
        # pretrained encoder's weights) mean the spec file's directory too
        from hydranet.models.encoders import ENCODERS

        encoders = {}
        for group, enc in self.model.encoders.items():
            try:
                keys = getattr(ENCODERS.get(enc.name), "path_params", ())
            except UserError:  # an unknown encoder: the spec's own checks name it
                keys = ()
            update = {k: _joined(base, enc.params[k]) for k in keys if _relative(enc.params.get(k))}
            encoders[group] = (
                enc.model_copy(update={"params": {**enc.params, **update}}) if update else enc
            )
        if all(encoders[g] is e for g, e in self.model.encoders.items()):
            return self
        return self.model_copy(
            update={"model": self.model.model_copy(update={"encoders": encoders})}
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------- cross checks
    def _check_references(self) -> list[tuple[str, str]]:
        """Names that point into registries, and the params of what they name: names against
        the constructor's signature, values against its declared constraints."""
        from hydranet.balance import BALANCERS, Balancer
        from hydranet.models.trunks import TRUNKS, Trunk
        from hydranet.tasks import LOSSES, TASK_KINDS

        problems: list[tuple[str, str]] = []
        for i, task in enumerate(self.tasks):
            if task.kind not in TASK_KINDS:
                problems.append(
                    (
                        f"tasks[{i}].kind",
                        f"unknown task kind {task.kind!r}; allowed: {', '.join(TASK_KINDS.names())}",
                    )
                )
            if task.loss is not None and task.loss not in LOSSES and ":" not in task.loss:
                problems.append(
                    (
                        f"tasks[{i}].loss",
                        f"unknown loss {task.loss!r}; allowed: {', '.join(LOSSES.names())} or 'pkg.mod:Loss'",
                    )
                )
            if task.kind in TASK_KINDS:
                problems += [(f"tasks[{i}]", p) for p in TASK_KINDS.get(task.kind).check_spec(task)]
        problems += self._check_features()
        if self.data.source != "auto":
            from hydranet.data.sources import source_class
            from hydranet.errors import UserError

            try:
                source_class(self.data.source)
            except UserError as e:
                problems.append(("data.source", str(e)))
        problems += _check_named(
            TRUNKS,
            Trunk,
            self.model.architecture,
            self.model.params,
            "model.architecture",
            "model.params",
            skip=_TRUNK_BUILT_ARGS,
        )
        problems += _check_named(
            BALANCERS,
            Balancer,
            self.balance.method,
            self.balance.params,
            "balance.method",
            "balance.params",
            skip=_BALANCER_BUILT_ARGS,
        )
        problems += _check_dataset(self.data)
        return problems

    def _check_features(self) -> list[tuple[str, str]]:
        """Feature kinds, their parameters, group names, encoders and the fusion."""
        from hydranet.features import FEATURES, FeatureGroup
        from hydranet.models.encoders import ENCODERS, FUSIONS, Encoder, Fusion

        problems: list[tuple[str, str]] = []
        for i, g in enumerate(self.features):
            problems += _check_named(
                FEATURES,
                FeatureGroup,
                g.kind,
                g.params,
                f"features[{i}].kind",
                f"features[{i}].params",
                skip=_GROUP_BUILT_ARGS,
            )
        names = [g.name for g in self.features]
        shortcut = [
            n
            for n, cols in (("categorical", self.data.categorical), ("numeric", self.data.numeric))
            if cols
        ]
        for n in sorted({n for n in names if names.count(n) > 1} | (set(names) & set(shortcut))):
            where = "data." + n if n in shortcut else "features"
            problems.append(
                (where, f"feature group {n!r} is defined twice; group names must be unique")
            )
        groups = set(names) | set(shortcut)
        if self.data.dataset and not shortcut:
            # a bundled dataset fills data.numeric / data.categorical when the spec is resolved
            groups |= {"numeric", "categorical"}
            if not names:
                # and brings its default groups of other kinds (image, text)
                from hydranet.data.datasets import DATASETS

                if self.data.dataset in DATASETS.names():
                    groups |= {g["name"] for g in DATASETS.get(self.data.dataset).features}
        for key, enc in self.model.encoders.items():
            if key not in groups:
                problems.append(
                    (
                        f"model.encoders.{key}",
                        f"no feature group {key!r}; groups: {', '.join(sorted(groups)) or '(none)'}",
                    )
                )
            problems += _check_named(
                ENCODERS,
                Encoder,
                enc.name,
                enc.params,
                f"model.encoders.{key}.name",
                f"model.encoders.{key}.params",
                skip=_ENCODER_BUILT_ARGS,
            )
        for name in self.train.shard_encoders:
            if name not in groups:
                problems.append(
                    (
                        "train.shard_encoders",
                        f"no feature group {name!r}; groups: {', '.join(sorted(groups)) or '(none)'}",
                    )
                )
        problems += _check_named(
            FUSIONS,
            Fusion,
            self.model.fusion,
            self.model.fusion_params,
            "model.fusion",
            "model.fusion_params",
            skip={"self", "dims", "tasks"},
        )
        return problems


# Constructor arguments filled by hydranet itself, not by the user's params.
_GROUP_BUILT_ARGS = {"self", "name", "columns"}
_ENCODER_BUILT_ARGS = {"self", "group", "model_spec", "state"}
_TRUNK_BUILT_ARGS = {"self", "input_dim", "tasks", "activation", "dropout"}
_BALANCER_BUILT_ARGS = {"self", "tasks", "weights", "rep_grad"}


def _check_named(
    registry,
    base: type,
    name: str,
    params: dict[str, Any],
    name_key: str,
    params_key: str,
    skip: set[str],
) -> list[tuple[str, str]]:
    """The registry entry ``name``, the names of its params (against its constructor's
    signature) and their values (against its declared ``param_constraints``)."""
    from hydranet.errors import UserError
    from hydranet.params import check_values

    try:
        cls = registry.get(name)
    except UserError as e:
        return [(name_key, str(e))]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return [(name_key, f"{name!r} is not a subclass of hydranet.{base.__name__}")]
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return check_values(cls.param_constraints, params, params_key)
    accepted = {n: p for n, p in sig.parameters.items() if n not in skip}
    problems = []
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        allowed = sorted(
            n for n, p in accepted.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        problems += [
            (
                f"{params_key}.{key}",
                f"unknown parameter of {name!r}; allowed: {', '.join(allowed) or '(none)'}",
            )
            for key in params
            if key not in allowed
        ]
    known = {k: v for k, v in params.items() if k in accepted}
    problems += check_values(cls.param_constraints, known, params_key)
    if problems:
        return problems
    # only now is every value valid on its own: the checks between parameters see them all
    full = {n: p.default for n, p in accepted.items() if p.default is not p.empty}
    full.update(params)
    return [(f"{params_key}.{key}", msg) for key, msg in cls.check_params(full)]


def _check_dataset(data: DataSpec) -> list[tuple[str, str]]:
    """``data.dataset`` names a bundled dataset; ``data.params`` are its, with valid values."""
    from hydranet.data.datasets import DATASETS, BundledDataset
    from hydranet.errors import UserError
    from hydranet.params import check_values

    if data.dataset is None:
        return []
    try:
        entry = DATASETS.get(data.dataset)
    except UserError as e:
        return [("data.dataset", str(e))]
    if not isinstance(entry, BundledDataset):
        return [("data.dataset", f"{data.dataset!r} is not a hydranet BundledDataset")]
    allowed = ", ".join(sorted(entry.params)) or "(none)"
    problems = [
        (f"data.params.{key}", f"unknown parameter of dataset {data.dataset!r}; allowed: {allowed}")
        for key in data.params
        if key not in entry.params
    ]
    return problems + check_values(entry.constraints, data.params, "data.params")


_INT64 = 2**63


def _check_numbers(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every number in the raw spec fits what reads it: an int in int64 (torch, Arrow and
    NumPy take no larger) and a float finite (no key means anything by inf or nan)."""
    if isinstance(value, dict):
        return [
            p
            for k, v in value.items()
            for p in _check_numbers(v, f"{path}.{k}" if path else str(k))
        ]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _check_numbers(v, f"{path}[{i}]")]
    if isinstance(value, bool):
        return []
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return [(path, f"number out of range (got {value:.3g}); at most {_INT64 - 1:,}")]
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, f"must be a finite number (got {value!r})")]
    return []


def _parse_error(e: Exception) -> tuple[str, str]:
    """`` line L, column C`` (1-based, empty when unknown) and the parser's problem, one line."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        msg = e.problem or "invalid YAML"
        if e.context:
            msg += f" ({e.context})"
        return f" line {mark.line + 1}, column {mark.column + 1}", msg
    if isinstance(e, json.JSONDecodeError):
        return f" line {e.lineno}, column {e.colno}", e.msg
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)  # tomllib's suffix
    if found:
        return f" line {found[1]}, column {found[2]}", msg[: found.start()]
    return "", msg


# pydantic's prefixes of a validator's ValueError / AssertionError message
_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")
# a loc part naming the member of a union a value was tried against ('str', 'list[str]',
# "literal['*']", 'constrained-int' for an int with bounds); pydantic reports one error per
# member, merged here into one
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|bytes|none|constrained-[a-z]+|[a-z-]+\[.*\])$")


def _problems(err: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    merged: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        path = _loc(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, e["loc"][:-1])
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        else:
            msg = _PYDANTIC_PREFIX.sub("", e["msg"])
            if (
                "input" in e
                and e["type"] not in ("missing",)
                and not isinstance(e["input"], (dict, list))
            ):
                got[path] = f" (got {e['input']!r})"
        merged.setdefault(path, [])
        if msg not in merged[path]:
            merged[path].append(msg)
    return [(path, _one_of(msgs) + got.get(path, "")) for path, msgs in merged.items()]


def _one_of(msgs: list[str]) -> str:
    """The messages of one key as one: a union's 'Input should be a valid string', 'Input
    should be a valid integer' as 'Input should be a valid string or a valid integer'."""
    lead = "Input should be "
    if len(msgs) == 1 or not all(m.startswith(lead) for m in msgs):
        return "; ".join(msgs)
    # the reasons after a comma ('unable to interpret input') are the member's, not the key's
    wants = [re.sub(r", (unable|got) .*$", "", m[len(lead) :]) for m in msgs]
    return lead + ", ".join(wants[:-1]) + " or " + wants[-1]


def _loc(loc: tuple) -> str:
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        else:
            s += ("." if s else "") + str(part)
    return s


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        model = _model_in(ann)
        if model is None:
            return []
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
