"""Batch predict and Run.predict: outputs never clobber inputs, kept columns never clash,
bad values are checked as the server checks them, and the API raises hydranet's errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from hydranet.cli import main
from hydranet.errors import DataError
from hydranet.run import Run
from test_serve_app import train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp() / "serve-tiny")


@pytest.fixture(scope="module")
def run(tiny_run) -> Run:
    return Run.load(tiny_run)


@pytest.fixture
def rows(tiny_run) -> pa.Table:
    """12 feature rows (and labels) of the run's test split."""
    return pq.read_table(tiny_run.parent / "test.parquet").slice(0, 12)


def cli(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> str:
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- point 1: the output
def test_output_that_is_the_input_is_refused_and_the_input_kept(tiny_run, rows, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    src = data / "rows.csv"
    pacsv.write_csv(rows, src)
    before = src.read_bytes()
    link = tmp_path / "link.csv"
    link.hardlink_to(src)  # the same file by inode under another name
    for output, extra in [
        (src, []),
        (src, ["--overwrite"]),
        (link, ["--overwrite"]),
        (tmp_path / "data" / "../data/rows.csv", ["--overwrite"]),
    ]:
        code, err = cli(capsys, tiny_run, src, "--output", output, *extra)
        assert code == 2 and "is the input file" in one_line(err), (output, err)
    # a glob or a directory that holds (or would hold) the output
    code, err = cli(capsys, tiny_run, data / "*.csv", "--output", src, "--overwrite")
    assert code == 2 and "matches the input pattern" in one_line(err)
    code, err = cli(capsys, tiny_run, data, "--output", data / "new.csv")
    assert code == 2 and "inside the input directory" in one_line(err)
    assert src.read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["rows.csv"]


def test_an_existing_output_is_replaced_only_with_overwrite(tiny_run, rows, tmp_path, capsys):
    src = tmp_path / "rows.parquet"
    pq.write_table(rows, src)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier results")
    code, err = cli(capsys, tiny_run, src, "--output", out)
    assert code == 2 and "exists; pass --overwrite" in one_line(err)
    assert out.read_bytes() == b"earlier results"
    # a failure with --overwrite (a refused value) leaves the old file and no temporary one
    bad = rows.set_column(0, "a", pa.array([1e300] + rows.column("a").to_pylist()[1:]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    code, err = cli(capsys, tiny_run, tmp_path / "bad.parquet", "--output", out, "--overwrite")
    assert code == 2 and out.read_bytes() == b"earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.parquet",
        "out.parquet",
        "rows.parquet",
    ]
    assert cli(capsys, tiny_run, src, "--output", out, "--overwrite")[0] == 0
    assert pq.read_table(out).num_rows == 12


# ---------------------------------------------------------------- point 3: --keep
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_keep_refuses_a_column_named_like_an_output(tiny_run, rows, tmp_path, capsys, suffix):
    src = tmp_path / "rows.parquet"
    pq.write_table(rows.append_column("id", pa.array(range(12))), src)
    out = tmp_path / f"out{suffix}"
    for keep, expected in [
        (["id", "click"], "--keep click: the output already has a column 'click'"),
        (["kind_probs"], "--keep kind_probs: the output already has a column 'kind_probs'"),
        (["id", "id"], "--keep id: the column is named twice"),
    ]:
        code, err = cli(capsys, tiny_run, src, "--output", out, "--keep", *keep)
        assert code == 2 and one_line(err).endswith(
            "(rename it in the input)" if "named twice" not in expected else "named twice"
        )
        assert expected in err and not out.exists()
    code, err = cli(capsys, tiny_run, src, "--output", out, "--bad-rows", "mark", "--keep", "error")
    assert code == 2 and "'error' (the reason a row is not predicted" in one_line(err)
    # kept columns that do not clash: every name once, readable back in both formats
    assert cli(capsys, tiny_run, src, "--output", out, "--keep", "id", "color")[0] == 0
    back = pq.read_table(out) if suffix == ".parquet" else pacsv.read_csv(out)
    assert back.column_names == ["id", "color", "click", "value", "kind", "kind_probs"]
    assert back.column("id").to_pylist() == list(range(12))


# ---------------------------------------------------------------- point 4: bad values
def _bad_rows(rows: pa.Table) -> pa.Table:
    """Rows 3 and 8 (1-based) with a value the server refuses; row 10 with two."""
    a = rows.column("a").to_pylist()
    b = rows.column("b").to_pylist()
    a[2], b[7], a[9], b[9] = 1e300, float("inf"), -1e250, 1e39
    return rows.set_column(0, "a", pa.array(a)).set_column(1, "b", pa.array(b))


def test_bad_values_refused_by_default_like_the_server(tiny_run, run, rows, tmp_path, capsys):
    bad = _bad_rows(rows)
    src = tmp_path / "rows.csv"
    pacsv.write_csv(bad, src)  # CSV: 1e300 and inf as text, read back as numbers
    out = tmp_path / "out.parquet"
    code, err = cli(capsys, tiny_run, src, "--output", out)
    assert code == 2 and not out.exists()
    assert one_line(err).startswith(
        f"hydranet: error: {src}: 3 of 12 rows cannot be predicted (rows 3, 8, 10); "
        "row 3: column 'a': 1e+300 is too large for the model (beyond float32 once scaled); "
        "nothing written; pass --bad-rows mark"
    )
    # the API: hydranet's error type, the same message up to the hint
    with pytest.raises(DataError) as e:
        run.predict(src)
    head = f"{src}: 3 of 12 rows cannot be predicted (rows 3, 8, 10); row 3: column 'a': 1e+300"
    assert str(e.value).startswith(head) and "bad_rows='mark'" in str(e.value)
    with pytest.raises(DataError, match=r"the Arrow table: 3 of 12 rows .* \(rows 3, 8, 10\)"):
        run.predict(bad)


def test_bad_values_marked_and_the_other_rows_predicted(tiny_run, run, rows, tmp_path, capsys):
    bad = _bad_rows(rows)
    src = tmp_path / "rows.parquet"
    pq.write_table(bad, src)
    out = tmp_path / "out.csv"
    code, err = cli(capsys, tiny_run, src, "--output", out, "--bad-rows", "mark", "--keep", "a")
    assert code == 0 and "3 of 12 rows cannot be predicted (rows 3, 8, 10)" in one_line(err)
    got = pacsv.read_csv(out)
    reasons = got.column("error").to_pylist()
    assert [i + 1 for i, r in enumerate(reasons) if r] == [3, 8, 10]
    assert reasons[7] == "column 'b': inf is not a finite number"
    assert reasons[9].startswith("column 'a': -1e+250 is too large")
    good = [i for i, r in enumerate(reasons) if not r]  # CSV: a null is an empty cell
    ref = run.predict(rows.take(good))
    assert np.allclose(got.column("value").to_numpy()[good], ref.column("value").to_numpy())
    for name in ("click", "value", "kind", "kind_probs"):
        assert [got.column(name)[i].as_py() or None for i in (2, 7, 9)] == [None] * 3, name
    assert got.column("a")[2].as_py() == 1e300  # the kept input column as it was
    # the API marks the same rows
    marked = run.predict(bad, bad_rows="mark")
    assert [r or "" for r in marked.column("error").to_pylist()] == reasons


def test_batch_and_server_refuse_the_same_values(tiny_run, rows):
    """The rows the server refuses (422) are the rows batch predict refuses, for the same column."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from hydranet.serve.app import Settings, create_app
    from hydranet.serve.predictor import Predictor

    bad = _bad_rows(rows).select(["a", "b", "c", "color", "size"])
    app = create_app(Predictor.load(tiny_run), Settings())

    async def send():
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answers = []
                for row in bad.to_pylist():  # one request per row: each gets its own answer
                    # an infinite number is spelt 1e400 in JSON (Infinity is not JSON)
                    text = json.dumps({"rows": [row]}).replace("Infinity", "1e400")
                    r = await client.post(
                        "/v1/predict", content=text, headers={"content-type": "application/json"}
                    )
                    answers.append((r.status_code, r.json()))
                return answers

    answers = asyncio.run(send())
    assert {code for code, _ in answers} == {200, 422}
    refused = {i: a["error"]["field"] for i, (code, a) in enumerate(answers) if code == 422}
    marked = Run.load(tiny_run).predict(bad, bad_rows="mark").column("error").to_pylist()
    assert refused == {i: m.split("'")[1] for i, m in enumerate(marked) if m}


def test_text_in_a_numeric_column_names_row_and_value(run, rows):
    # a Parquet or frame column of text where the run has a numeric feature: numbers in
    # text are numbers, anything else is the row's problem (no advice to edit the spec)
    a = [str(v) for v in rows.column("a").to_pylist()]
    a[4] = "seven"
    table = rows.set_column(0, "a", pa.array(a))
    with pytest.raises(DataError) as e:
        run.predict(table)
    assert "(row 5); row 5: column 'a': 'seven' is not a number" in str(e.value)
    ref = run.predict(rows).column("value").to_numpy()
    got = run.predict(table, bad_rows="mark").column("value").to_numpy(zero_copy_only=False)
    keep = np.arange(12) != 4
    assert np.allclose(got[keep], ref[keep]) and np.isnan(got[4])
    stamps = rows.set_column(0, "a", pa.array(np.arange(12).astype("datetime64[s]")))
    with pytest.raises(DataError) as e:
        run.predict(stamps)
    message = str(e.value)
    assert (
        "column 'a' has type timestamp[s], but the run's numeric feature 'a' takes numbers"
        in message
    )
    assert "categorical" not in message


def test_non_finite_predictions_are_never_written_silently(tiny_run, rows):
    run = Run.load(tiny_run)  # its own copy: the weights are spoiled below
    with torch.no_grad():
        next(p for n, p in run.model.named_parameters() if "click" in n).fill_(float("nan"))
    with pytest.raises(DataError, match=r"12 of 12 rows .* task 'click' predicts nan"):
        run.predict(rows)
    marked = run.predict(rows, bad_rows="mark")
    assert marked.column("click").null_count == 12
    assert set(marked.column("error").to_pylist()) == {
        "task 'click' predicts nan (not a finite number)"
    }


# ---------------------------------------------------------------- point 8: the Python API
def test_zero_rows_give_an_empty_table_of_the_output_schema(run, rows):
    empty = run.predict(rows.slice(0, 0))
    assert empty.num_rows == 0 and empty.schema == run.predict(rows).schema
    frame = run.predict(rows.slice(0, 0).to_pandas())
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == empty.column_names
    assert run.predict(rows.slice(0, 0), bad_rows="mark").column_names[-1] == "error"


def test_a_frame_mixing_numbers_and_strings_is_a_data_error_naming_the_column(run, rows):
    frame = rows.to_pandas()
    frame["b"] = frame["b"].astype(object)
    frame.loc[6, "b"] = "n/a"
    with pytest.raises(DataError) as e:
        run.predict(frame)
    assert str(e.value) == (
        "the pandas DataFrame: column 'b' mixes types: row 1 holds the number "
        f"{frame['b'][0]!r}, row 7 the string 'n/a'; make the column one type"
    )
    # a mixed column the model does not read is not its business
    frame["b"] = rows.column("b").to_pandas()
    frame["note"] = [1, "x"] * 6
    assert len(run.predict(frame)) == 12


def test_api_and_cli_agree_on_a_file(tiny_run, run, rows, tmp_path, capsys):
    src = tmp_path / "rows.parquet"
    pq.write_table(rows, src)
    out = tmp_path / "out.parquet"
    assert cli(capsys, tiny_run, src, "--output", out)[0] == 0
    assert pq.read_table(out).equals(run.predict(src))
    assert run.predict(rows.to_pandas()).equals(run.predict(rows).to_pandas())
