"""A fuzz test of the command line (issue 14's acceptance): corrupted run files, bad specs and
bad data files, with a fixed seed and a bounded count of cases.

The CLI runs in this process (``hydranet.cli.main(argv)``: no interpreter start-up per case).
The oracle, for every case:

* no exception escapes ``main`` (that is a traceback for a user);
* a failure exits non-zero with its first stderr line starting ``hydranet: error:`` (after any
  ``hydranet: warning:`` lines) and no traceback; ``export`` may also refuse with
  ``hydranet: export failed:`` (exit 1);
* an exit 0 is right: after corrupting a run file that predictions read, exit 0 is a failure
  (a manifest of checksums is verified when a run loads); after corrupting any other file
  the output equals the intact run's; a ``predict`` that exits 0 writes one row per input row
  and no NaN or infinite prediction; an ``evaluate`` that exits 0 gives finite metrics.

Every case runs and the failures are reported together, one line each, so one bug does not
hide the others. The default part takes about 20 s on an idle 2-core machine (under 60 s on a busy one); the
``slow`` part runs more corruptions with other seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import make_table
from hydranet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED = 14

# the run files that predict, evaluate and export read: a corruption that leaves them
# loadable must still be refused (the run's manifest of checksums)
PREDICTION_FILES = {
    "spec.json",
    "preprocessor.json",
    "tasks.json",
    "encoders.json",
    "model.safetensors",
}

SPEC: dict[str, Any] = {
    "name": "fuzz",
    "data": {
        "numeric": ["a", "b", "c"],
        "categorical": ["color", "size"],
        "validation_fraction": 0.25,
    },
    "tasks": [
        {"name": "click", "kind": "binary"},
        {"name": "value", "kind": "regression"},
        {"name": "kind", "kind": "multiclass"},
    ],
    "model": {"architecture": "shared_bottom", "embedding_dim": 3, "tower": [8]},
    "train": {
        "epochs": 2,
        "batch_size": 128,
        "lr": 0.01,
        "seed": 0,
        "early_stopping": {"metric": "click.auc", "patience": 2},
    },
}


# ---------------------------------------------------------------- running the CLI
@dataclass
class Outcome:
    argv: list[str]
    code: int | None
    out: str
    err: str
    exc: BaseException | None = None


def _cli(*argv: Any) -> Outcome:
    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    code, exc = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own exit
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001  (the oracle: nothing may escape)
            exc = e
    return Outcome(args, code, out.getvalue(), err.getvalue(), exc)


def _failure(o: Outcome, success: Callable[[Outcome], str | None] | None) -> str | None:
    """Why ``o`` breaks the oracle, or None. ``success`` checks an exit 0 (None: an exit 0
    is itself wrong)."""
    if o.exc is not None:
        first = (str(o.exc).splitlines() or [""])[0][:160]
        return f"traceback: {type(o.exc).__name__}: {first}"
    if "Traceback (most recent call last)" in o.err:
        return "traceback on stderr: " + o.err.strip().splitlines()[-1][:160]
    if o.code != 0:
        lines = [line for line in o.err.splitlines() if not line.startswith("hydranet: warning: ")]
        first = lines[0] if lines else ""
        allowed = ("hydranet: error: ",) + (
            ("hydranet: export failed: ",) if o.argv[0] == "export" else ()
        )
        if not first.startswith(allowed):
            return f"exit {o.code} without a 'hydranet: error:' line: {o.err.strip()[:160]!r}"
        return None
    if success is None:
        return "exit 0"
    return success(o)


def _same_output(expected: str) -> Callable[[Outcome], str | None]:
    def check(o: Outcome) -> str | None:
        return (
            None
            if o.out == expected
            else "exit 0 with an output that differs from the intact run's"
        )

    return check


def _finite_metrics(o: Outcome) -> str | None:
    try:
        metrics = json.loads(o.out)
    except json.JSONDecodeError:
        return f"exit 0 with unreadable --json output {o.out[:80]!r}"
    bad = [
        f"{task}.{name}={value}"
        for task, ms in metrics.items()
        for name, value in ms.items()
        if not (isinstance(value, (int, float)) and math.isfinite(value))
    ]
    return f"exit 0 with non-finite metrics: {', '.join(bad[:4])}" if bad else None


def _predictions_ok(path: Path, rows: int, baseline: pa.Table | None = None):
    def check(o: Outcome) -> str | None:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            return f"exit 0 but the output cannot be read: {e}"
        if table.num_rows != rows:
            return f"exit 0 with {table.num_rows} prediction rows for {rows} input rows"
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_list(col.type):
                col = col.combine_chunks().flatten()
            if pa.types.is_floating(col.type):
                values = col.drop_null().to_numpy(zero_copy_only=False)
                if not np.isfinite(values).all():
                    return f"exit 0 with NaN or infinite predictions in column {name!r}"
        if baseline is not None and not table.equals(baseline):
            return "exit 0 with predictions that differ from the intact run's"
        return None

    return check


# ---------------------------------------------------------------- fixtures
@dataclass
class Trained:
    root: Path
    run: Path
    spec: Path
    test: Path
    files: list[str]
    evaluate_json: str
    predictions: pa.Table


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("fuzz")
    paths = {}
    for split, n, seed in (("train", 480, 0), ("test", 160, 2)):
        paths[split] = root / f"{split}.parquet"
        pq.write_table(make_table(n, seed=seed), paths[split])
    spec = _deep_copy(SPEC)
    spec["data"].update(train=str(paths["train"]), test=str(paths["test"]))
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run = root / "run"
    o = _cli("train", spec_path, "--out", run)
    assert o.code == 0 and o.exc is None, o.err
    intact = _cli("evaluate", run, "--split", "validation", "--json")
    assert intact.code == 0, intact.err
    o = _cli("predict", run, paths["test"], "--output", root / "intact.parquet")
    assert o.code == 0, o.err
    return Trained(
        root=root,
        run=run,
        spec=spec_path,
        test=paths["test"],
        files=sorted(p.name for p in run.iterdir() if p.is_file()),
        evaluate_json=intact.out,
        predictions=pq.read_table(root / "intact.parquet"),
    )


def _deep_copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _report(failures: list[str], cases: int) -> None:
    assert not failures, f"{len(failures)} of {cases} cases broke the oracle:\n" + "\n".join(
        failures
    )


# ---------------------------------------------------------------- (a) corrupted run files
def _corrupt(data: bytes, how: str, rng: random.Random) -> bytes | None:
    """The file's new bytes (None: delete it)."""
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if out:
                out[rng.randrange(len(out))] ^= rng.randint(1, 255)
        return bytes(out)
    if how == "truncate":
        return data[: rng.randrange(max(1, len(data)))]
    if how == "empty":
        return b""
    if how == "garbage":
        return rng.randbytes(rng.randint(1, max(2, 2 * len(data))))
    assert how == "delete"
    return None


def _fuzz_run_files(trained: Trained, tmp_path: Path, seed: int, flips: int, export_share: float):
    rng = random.Random(seed)
    has_onnx = all(_importable(m) for m in ("onnx", "onnxruntime"))
    failures, cases = [], 0
    hows = ["flip"] * flips + ["truncate", "empty", "garbage", "delete"]
    for name in trained.files:
        for k, how in enumerate(hows):
            run = tmp_path / f"{name}-{how}-{k}"
            shutil.copytree(trained.run, run)
            data = _corrupt((run / name).read_bytes(), how, rng)
            if data is None:
                (run / name).unlink()
            else:
                (run / name).write_bytes(data)
            case = f"(a) {name} {how}#{k}"
            o = _cli("evaluate", run, "--split", "validation", "--json")
            ok = None if name in PREDICTION_FILES else _same_output(trained.evaluate_json)
            checks = [(o, ok)]
            out = run.with_suffix(".parquet")
            o = _cli("predict", run, trained.test, "--output", out)
            base = None if name in PREDICTION_FILES else trained.predictions
            ok = None if base is None else _predictions_ok(out, len(trained.predictions), base)
            checks.append((o, ok))
            if has_onnx and rng.random() < export_share:
                o = _cli("export", run, "--onnx", run.with_suffix(".onnx"))
                checks.append((o, None if name in PREDICTION_FILES else (lambda o: None)))
            for o, ok in checks:
                cases += 1
                why = _failure(o, ok)
                if why:
                    failures.append(f"{case} {o.argv[0]}: {why}")
    return failures, cases


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_corrupted_run_files(trained, tmp_path):
    failures, cases = _fuzz_run_files(trained, tmp_path, SEED, flips=2, export_share=0.5)
    _report(failures, cases)


@pytest.mark.slow
def test_corrupted_run_files_more(trained, tmp_path):
    failures, cases = _fuzz_run_files(trained, tmp_path, SEED + 1, flips=6, export_share=1.0)
    _report(failures, cases)


# ---------------------------------------------------------------- (b) bad specs
BAD_VALUES: list[Any] = [
    "text",
    "",
    -1,
    0,
    10**30,
    -(10**30),
    1.5,
    math.inf,
    math.nan,
    True,
    [],
    [1, "a"],
    {},
    {"x": 1},
]


def _leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every key path of ``obj`` (tables, list items and values alike)."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, (*path, i))
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


def _delete(obj: Any, path: tuple) -> None:
    for part in path[:-1]:
        obj = obj[part]
    del obj[path[-1]]


def _toml(value: Any) -> str:
    """A TOML value (inline tables and arrays: a whole spec is one line per top key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"


def _write_spec(raw: Any, path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps(raw))
    elif path.suffix == ".yaml":
        path.write_text(yaml.safe_dump(raw))
    elif isinstance(raw, dict):
        path.write_text("".join(f"{json.dumps(str(k))} = {_toml(v)}\n" for k, v in raw.items()))
    else:
        path.write_text(f"value = {_toml(raw)}\n")


def _bad_spec(base: dict, rng: random.Random, tmp: Path, k: int) -> tuple[str, Path]:
    raw = _deep_copy(base)
    suffix = rng.choice([".toml", ".yaml", ".json"])
    path = tmp / f"spec{k}{suffix}"
    how = rng.choice(
        ["value", "value", "value", "unknown", "delete", "syntax", "bytes", "file", "top"]
    )
    if how == "value":
        where = rng.choice(_leaves(raw))
        value = rng.choice(BAD_VALUES)
        _set(raw, where, value)
        what = f"{'.'.join(map(str, where))} = {value!r}"
    elif how == "unknown":
        tables = [p for p in _leaves(raw) if isinstance(_get(raw, p), dict)] + [()]
        where = rng.choice(tables)
        _get(raw, where)["zz_unknown"] = 1
        what = f"unknown key under {'.'.join(map(str, where)) or 'top'}"
    elif how == "delete":
        where = rng.choice(_leaves(raw))
        _delete(raw, where)
        what = f"no {'.'.join(map(str, where))}"
    elif how == "top":
        raw = rng.choice([[1, 2], "text", 3])
        what = f"top level {raw!r}"
    if how in ("value", "unknown", "delete", "top"):
        _write_spec(raw, path)
        return f"{suffix} {what}", path
    _write_spec(raw, path)
    text = path.read_bytes()
    if how == "syntax":
        at = rng.randrange(len(text))
        junk = rng.choice([b"", b"[", b"]", b"{", b"}", b"=", b":", b'"', b"\t", b"\n- ", b","])
        text = text[:at] + junk + text[at + rng.randint(0, 3) :]
        path.write_bytes(text)
        return f"{suffix} syntax at byte {at} {junk!r}", path
    if how == "bytes":
        kind = rng.choice(["empty", "garbage", "latin-1"])
        data = {"empty": b"", "garbage": rng.randbytes(64), "latin-1": text + b"# caf\xe9\n"}[kind]
        path.write_bytes(data)
        return f"{suffix} {kind} file", path
    kind = rng.choice(["missing", "directory"])
    path = tmp / f"absent{k}{suffix}"
    if kind == "directory":
        path.mkdir()
    return f"{suffix} {kind} spec path", path


def _get(obj: Any, path: tuple) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _fuzz_specs(trained: Trained, tmp_path: Path, seed: int, count: int):
    rng = random.Random(seed)
    base = json.loads(trained.spec.read_text())
    base["train"]["epochs"] = 1
    failures = []
    for k in range(count):
        what, path = _bad_spec(base, rng, tmp_path, k)
        o = _cli("plan", path)
        why = _failure(o, lambda o: None if "# resolved spec" in o.out else "exit 0, no plan")
        if why:
            failures.append(f"(b) spec {what}: plan: {why}")
    return failures, count


def test_bad_specs(trained, tmp_path):
    failures, cases = _fuzz_specs(trained, tmp_path, SEED, count=100)
    _report(failures, cases)


@pytest.mark.slow
def test_bad_specs_more(trained, tmp_path):
    failures, cases = _fuzz_specs(trained, tmp_path, SEED + 1, count=400)
    _report(failures, cases)


# ---------------------------------------------------------------- (c) bad data files
def _bad_data(rng: random.Random, tmp: Path, k: int, clean: pa.Table) -> tuple[str, Path, int]:
    """A bad data file: what it is, its path and its row count (-1: not a table)."""
    n = clean.num_rows
    row = rng.randrange(n)
    column = rng.choice(["a", "b", "c", "color", "size"])
    kind = rng.choice(
        [
            "garbage",
            "empty",
            "header only",
            "truncated",
            "missing column",
            "mixed types",
            "huge number",
            "infinite",
            "text column",
            "list column",
            "not utf-8",
            "duplicate column",
            "no rows",
            "empty directory",
        ]
    )
    csv = rng.random() < 0.5
    path = tmp / f"data{k}.{'csv' if csv else 'parquet'}"
    what = f"{kind} ({path.suffix}, column {column!r}, row {row})"

    def write(table: pa.Table) -> None:
        if csv:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)

    def replaced(values: list) -> pa.Table:
        i = clean.column_names.index(column)
        return clean.set_column(i, column, pa.array(values))

    if kind == "garbage":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        return what, path, -1
    if kind == "empty":
        path.write_bytes(b"")
        return what, path, -1
    if kind == "empty directory":
        path = tmp / f"dir{k}"
        path.mkdir()
        return f"{kind}", path, -1
    if kind in ("header only", "no rows"):
        write(clean.slice(0, 0))
        return what, path, 0
    if kind == "truncated":
        write(clean)
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(1, len(data))])
        return what, path, -1
    if kind == "missing column":
        write(clean.drop_columns([column]))
        return what, path, n
    if kind == "duplicate column":
        write(clean.append_column(column, clean.column(column)))
        return what, path, n
    values = clean.column(column).to_pylist()
    if kind == "mixed types":
        # numbers as text with one that is not (a CSV column Arrow reads as text)
        values = [str(v) for v in values]
        values[row] = rng.choice(["x", "1.5.3", "--", "N/A?"])
        write(replaced(values))
        return what, path, n
    if kind in ("huge number", "infinite"):
        if column in ("color", "size"):
            column = "a"
            values = clean.column(column).to_pylist()
        values[row] = (
            rng.choice([1e300, -1e300, 1e38, 2.0**70])
            if kind == "huge number"
            else rng.choice([math.inf, -math.inf, math.nan])
        )
        write(replaced(values))
        return f"{kind} {values[row]!r} ({path.suffix}, column {column!r}, row {row})", path, n
    if kind == "text column":
        write(replaced([f"v{v}" for v in values]))
        return what, path, n
    if kind == "list column":
        if csv:
            path = path.with_suffix(".parquet")
            csv = False
        write(replaced([[v] for v in values]))
        return what, path, n
    assert kind == "not utf-8"
    write(clean)
    if csv:
        text = path.read_bytes().splitlines(keepends=True)
        line = text[1 + row]
        text[1 + row] = (
            line.replace(b"red", b"r\xe9d\xff") if b"red" in line else b"\xff\xfe" + line
        )
        path.write_bytes(b"".join(text))
    else:
        path.write_bytes(path.read_bytes()[:-12] + rng.randbytes(12))  # a broken footer
    return what, path, -1


def _fuzz_data(trained: Trained, tmp_path: Path, seed: int, count: int):
    rng = random.Random(seed)
    clean = pq.read_table(trained.test)
    base = json.loads(trained.spec.read_text())
    base["train"]["epochs"] = 1
    failures, cases = [], 0
    for k in range(count):
        what, path, rows = _bad_data(rng, tmp_path, k, clean)
        spec = _deep_copy(base)
        spec["data"]["train"] = str(path)
        spec_path = tmp_path / f"spec{k}.json"
        spec_path.write_text(json.dumps(spec))
        out = tmp_path / f"pred{k}.parquet"
        checks = [
            (_cli("plan", spec_path), lambda o: None),
            (_cli("evaluate", trained.run, "--split", path, "--json"), _finite_metrics),
            (_cli("predict", trained.run, path, "--output", out), _predictions_ok(out, rows)),
        ]
        if checks[0][0].code == 0 and rows > 0:
            # what plan accepts must train to a usable run, or refuse with one line
            run = tmp_path / f"run{k}"
            o = _cli("train", spec_path, "--out", run, "--no-progress")
            checks.append((o, lambda o: None))
            if o.code == 0:
                checks.append((_cli("evaluate", run, "--json"), _finite_metrics))
        for o, ok in checks:
            cases += 1
            why = _failure(o, ok)
            if why:
                failures.append(f"(c) data {what}: {o.argv[0]}: {why}")
    return failures, cases


def test_bad_data_files(trained, tmp_path):
    failures, cases = _fuzz_data(trained, tmp_path, SEED, count=30)
    _report(failures, cases)


@pytest.mark.slow
def test_bad_data_files_more(trained, tmp_path):
    failures, cases = _fuzz_data(trained, tmp_path, SEED + 1, count=120)
    _report(failures, cases)
