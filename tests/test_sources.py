"""The SOURCES registry: files (CSV cell rules, UTF-8 errors), frames, Spark, a user's
source by import path, and the row ids of carved splits in the run directory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import hydranet
import hydranet.cli
from hydranet import rundir
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import (
    SOURCES,
    Source,
    iter_batches,
    load_splits,
    open_source,
    read_table,
)
from hydranet.data.sources.files import first_bad_utf8
from hydranet.errors import DataError, SpecError, UserError
from hydranet.spec import CsvSpec, DataSpec, Spec, TaskSpec
from hydranet.tasks import build_task


def _csv(tmp_path, text: str | bytes, name: str = "d.csv") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def _data(**csv) -> DataSpec:
    return DataSpec(csv=CsvSpec(**csv))


# ---------------------------------------------------------------- CSV cells
BLANKS = """num,x,cat,kind,click,answer
1,0.5,red,cat,1,yes
,1.5,,dog,0,no
3,,blue,,,
4,2.5,"",bird,1,yes
5,3.5,green,cat,0,no
"""


def test_blank_csv_cells_are_missing_in_every_column(tmp_path):
    t = read_table(_csv(tmp_path, BLANKS))
    assert t.schema.field("num").type == pa.int64()
    assert t.schema.field("x").type == pa.float64()
    assert t.column("num").to_pylist() == [1, None, 3, 4, 5]
    assert t.column("x").to_pylist() == [0.5, 1.5, None, 2.5, 3.5]
    # a blank (or quoted empty) text cell is missing, never the value ""
    assert t.column("cat").to_pylist() == ["red", None, "blue", None, "green"]
    assert t.column("kind").to_pylist() == ["cat", "dog", None, "bird", "cat"]
    assert t.column("answer").to_pylist() == ["yes", "no", None, "yes", "no"]

    kind = build_task(TaskSpec(name="kind", kind="multiclass")).fit(t)
    assert kind.state["classes"] == ["bird", "cat", "dog"]  # no class ""
    _, mask = kind.encode(t)
    assert mask.tolist() == [True, True, False, True, True]
    for spec in (
        TaskSpec(name="click", kind="binary"),
        TaskSpec(name="answer", kind="binary", positive="yes"),
    ):
        task = build_task(spec).fit(t)
        y, mask = task.encode(t)
        assert mask.tolist() == [True, True, False, True, True], spec.name  # missing, not 0
        assert y[mask].tolist() == [1, 0, 1, 0], spec.name
    prep = Preprocessor.tabular([], ["cat"]).fit(t)
    # a blank categorical is null, as serving's null
    assert "" not in prep.groups["categorical"].vocabularies_["cat"]


def test_whitespace_only_and_padded_cells(tmp_path):
    wide = " " * 9  # longer than any run pyarrow is told is null: cleaned after reading
    text = f"n,m,label,cat\n1, 2 , >50K,a \n  ,{wide}, <=50K,{wide}\n3, NA ,  ,\t\n4,5, >50K, b\n"
    t = read_table(_csv(tmp_path, text))
    assert t.schema.field("n").type == pa.int64()
    assert t.schema.field("m").type == pa.int64()  # text to pyarrow, numbers once cleaned
    assert t.column("n").to_pylist() == [1, None, 3, 4]
    assert t.column("m").to_pylist() == [2, None, None, 5]
    assert t.column("label").to_pylist() == [">50K", "<=50K", None, ">50K"]
    assert t.column("cat").to_pylist() == ["a", None, None, "b"]
    batches = list(iter_batches(_csv(tmp_path, text), batch_rows=2))
    assert pa.Table.from_batches(batches).equals(t)
    assert open_source(_csv(tmp_path, text)).schema == t.schema

    kept = read_table(_csv(tmp_path, text), data=_data(strip_whitespace=False))
    assert kept.column("label").to_pylist() == [" >50K", " <=50K", "  ", " >50K"]
    assert kept.schema.field("n").type == pa.string()


def test_custom_null_values(tmp_path):
    path = _csv(tmp_path, "n,cat\n1,?\n?,NA\n3, ? \n,x\n")
    t = read_table(path, data=_data(null_values=["?"]))
    assert t.schema.field("n").type == pa.int64()
    assert t.column("n").to_pylist() == [1, None, 3, None]  # blank stays missing
    assert t.column("cat").to_pylist() == [None, "NA", None, "x"]  # "NA" is a value now
    assert read_table(path).column("cat").to_pylist() == ["?", None, "?", "x"]


def test_header_and_column_names(tmp_path):
    path = _csv(tmp_path, "1,a\n2,b\n")
    t = read_table(path, data=_data(header=False, column_names=["n", "k"]))
    assert t.column_names == ["n", "k"]
    assert t.column("n").to_pylist() == [1, 2]
    assert read_table(path, data=_data(header=False)).column_names == ["f0", "f1"]
    renamed = read_table(_csv(tmp_path, "x,y\n1,a\n", "h.csv"), data=_data(column_names=["n", "k"]))
    assert renamed.to_pydict() == {"n": [1], "k": ["a"]}


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path, delimiter):
    path = _csv(tmp_path, f"n{delimiter}k\n1{delimiter}a,b\n{delimiter}c\n")
    t = read_table(path, data=_data(delimiter=delimiter))
    assert t.to_pydict() == {"n": [1, None], "k": ["a,b", "c"]}


def test_csv_options_in_the_spec():
    spec = Spec.from_dict(
        {
            "data": {"train": "x.csv", "csv": {"header": False, "column_names": ["a", "y"]}},
            "tasks": [{"name": "y", "kind": "binary"}],
        }
    )
    assert spec.data.csv.column_names == ["a", "y"] and spec.data.csv.strip_whitespace
    assert "" in spec.data.csv.null_values
    with pytest.raises(SpecError, match=r"data\.csv\.delimiter"):
        Spec.from_dict(
            {"data": {"csv": {"delimiter": ";;"}}, "tasks": [{"name": "y", "kind": "binary"}]}
        )


# ---------------------------------------------------------------- UTF-8
@pytest.mark.parametrize(
    "content",
    [
        b"a,b\n1,ok\n2,caf\xe9\n3,x\n",  # latin-1 in a text column's first block
        b"a,b\xe9\n1,x\n",  # in the header
        b"a,b\n1,\xe2\x82\xac ok\n2,\xe2\x28\xa1\n",  # a valid euro sign, then a broken sequence
    ],
)
def test_non_utf8_csv_names_the_file_and_byte_offset(tmp_path, content):
    path = _csv(tmp_path, content)
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start
    with pytest.raises(DataError) as err:
        read_table(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert path in msg and f"byte offset {offset} " in msg


def test_non_utf8_beyond_the_first_block_found_while_reading(tmp_path):
    rows = ["a,b"] + [f"{i},v{i}" for i in range(250_000)]  # > pyarrow's 1 MiB first block
    rows[200_000] = "7,caf\xe9"
    content = "\n".join(rows).encode("latin-1")
    path = _csv(tmp_path, content)
    offset = content.index(b"\xe9")
    assert open_source(path).schema.field("b").type == pa.string()  # the first block is fine
    with pytest.raises(DataError, match=rf"{path} is not UTF-8 text: byte offset {offset} "):
        read_table(path, columns=["b"])
    with pytest.raises(DataError, match=rf"byte offset {offset} \(line 200001\)"):
        for _ in iter_batches(path, columns=["b"]):
            pass
    assert read_table(path, columns=["a"]).num_rows == 250_000  # an unread column is no error


def test_first_bad_utf8_across_chunk_boundaries(tmp_path):
    text = ("é€x\n" * 5).encode() + b"ab\xff" + "ü".encode()
    (tmp_path / "t.bin").write_bytes(text)
    for chunk in (1, 2, 3, 5, 64):
        assert first_bad_utf8(str(tmp_path / "t.bin"), chunk=chunk) == (len(text) - 3, 0xFF, 6)
    (tmp_path / "cut.bin").write_bytes("ab€".encode()[:-1])  # a character cut at the end
    assert first_bad_utf8(str(tmp_path / "cut.bin"), chunk=2) == (2, 0xE2, 1)
    (tmp_path / "ok.bin").write_bytes(text[:-5])
    assert first_bad_utf8(str(tmp_path / "ok.bin"), chunk=3) is None


# ---------------------------------------------------------------- frames and schema
def _table(n: int = 50) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "id": np.arange(n),
            "x": rng.normal(size=n),
            "k": rng.choice(["a", "b", "c"], n),
            "y": rng.integers(0, 2, n),
        }
    )


def test_frame_source_reads_as_the_file_source(tmp_path):
    table = _table()
    pq.write_table(table, tmp_path / "d.parquet")
    pacsv.write_csv(table, tmp_path / "d.csv")
    cols = ["k", "x", "y"]
    from_parquet = read_table(str(tmp_path / "d.parquet"), columns=cols)
    from_csv = read_table(str(tmp_path / "d.csv"), columns=cols)
    assert from_csv.equals(from_parquet)
    for frame in (table.to_pandas(), table, table.to_batches()[0]):
        src = open_source(frame)
        assert type(src) is SOURCES.get("frame")
        assert read_table(frame, columns=cols).equals(from_parquet)
        assert src.schema.names == table.column_names
        batches = list(iter_batches(frame, columns=cols, batch_rows=16))
        assert [b.num_rows for b in batches] == [16, 16, 16, 2]
        assert pa.Table.from_batches(batches).equals(from_parquet)
    with pytest.raises(DataError, match=r"column 'nope' not found in the pandas DataFrame"):
        read_table(table.to_pandas(), columns=["x", "nope"])
    with pytest.raises(DataError, match="the Arrow table has no rows"):
        read_table(table.slice(0, 0))
    with pytest.raises(DataError, match="cannot read rows from a list"):
        read_table([1, 2, 3])


def test_load_splits_takes_frames_in_place_of_paths():
    table = _table(100)
    splits = load_splits(
        DataSpec(test_fraction=0.2), ["x", "y"], inputs={"train": table.to_pandas()}
    )
    assert {s: t.num_rows for s, t in splits.items()} == {"train": 80, "test": 20}


def test_schema_without_reading_the_rows(tmp_path):
    rows = ["n,k"] + [f"{i},v" for i in range(250_000)]
    rows[-1] = "oops,v"  # a bad number far beyond the first block
    path = _csv(tmp_path, "\n".join(rows))
    src = open_source(path)
    assert src.schema == pa.schema({"n": pa.int64(), "k": pa.string()})
    with pytest.raises(DataError, match=r"cannot read .*d\.csv: .*oops"):
        src.table()
    pq.write_table(_table(10), tmp_path / "p.parquet")
    assert open_source(str(tmp_path / "p.parquet")).schema.names == ["id", "x", "k", "y"]


# ---------------------------------------------------------------- split row ids
def test_carved_split_row_ids(tmp_path):
    table = _table(1000)
    pq.write_table(table, tmp_path / "d.parquet")
    spec = DataSpec(
        train=str(tmp_path / "d.parquet"), validation_fraction=0.1, test_fraction=0.2, split_seed=3
    )
    tables, rows = load_splits(spec, ["id", "x"], with_rows=True)
    assert list(rows) == ["train", "validation", "test"]
    assert all(r.dtype == np.int64 for r in rows.values())
    everything = np.concatenate(list(rows.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(1000))  # disjoint, cover all
    full = read_table(str(tmp_path / "d.parquet"), columns=["id", "x"])
    for split, ids in rows.items():
        assert full.take(ids).equals(tables[split]), split
    assert load_splits(spec, ["id", "x"]).keys() == tables.keys()
    _, none = load_splits(
        spec.model_copy(update={"test_fraction": 0.0, "validation_fraction": 0.0}),
        ["id"],
        with_rows=True,
    )
    assert none == {}

    rundir.write_split_rows(tmp_path, rows)
    written = pq.read_table(tmp_path / rundir.SPLITS)
    assert written.schema == pa.schema({"split": pa.string(), "row": pa.int64()})
    back = rundir.read_split_rows(tmp_path)
    for split, ids in rows.items():
        np.testing.assert_array_equal(back[split], ids)
        test_rows = written.filter(pc.field("split") == split)["row"]
        assert table.take(test_rows).equals(table.take(ids))


def test_training_writes_the_split_rows(tiny, tmp_path):
    train = tiny.paths["train"]
    spec = Spec.from_dict(
        {
            "data": {
                "train": str(train),
                "validation_fraction": 0.2,
                "test_fraction": 0.1,
                "numeric": ["a", "b"],
                "categorical": ["color"],
            },
            "tasks": [{"name": "click", "kind": "binary"}],
            "model": {"architecture": "shared_bottom"},
            "train": {"epochs": 1, "batch_size": 128},
        }
    )
    run = hydranet.train(spec, tmp_path / "run", progress=False)
    t = pq.read_table(run.path / "splits.parquet")
    source = pq.read_table(train)
    tables = load_splits(spec.data, ["a", "b", "color", "click"])
    assert t.num_rows == source.num_rows
    for split in ("train", "validation", "test"):
        rows = t.filter(pc.field("split") == split)["row"]
        assert source.take(rows).select(["a", "b", "color", "click"]).equals(tables[split])
    plain = hydranet.train(tiny(epochs=1), tmp_path / "plain", progress=False)
    assert not (plain.path / "splits.parquet").exists()  # every split its own file


@pytest.mark.parametrize("streaming", [False, True])
def test_every_reader_of_a_run_reads_csv_with_its_options(tmp_path, streaming):
    """Training (in memory or streamed), Run.predict on a path and batch predict read the
    files with the spec's [data.csv] options: a ';'-separated file with '?' as missing."""
    rng = np.random.default_rng(0)
    lines = ["x;k;y"]
    for i in range(120):
        k = ["?", " a ", "b"][i % 3]
        lines.append(f"{rng.normal():.3f};{k};{int(rng.random() < 0.5)}")
    path = _csv(tmp_path, "\n".join(lines) + "\n")
    spec = Spec.from_dict(
        {
            "data": {
                "train": path,
                "numeric": ["x"],
                "categorical": ["k"],
                "streaming": streaming,
                "csv": {"delimiter": ";", "null_values": ["?"]},
            },
            "tasks": [{"name": "y", "kind": "binary"}],
            "model": {"architecture": "shared_bottom"},
            "train": {"epochs": 1, "batch_size": 32},
        }
    )
    run = hydranet.train(spec, tmp_path / "run", progress=False)
    # '?' is missing and ' a ' is stripped: the vocabulary holds a and b only
    assert sorted(run.preprocessor.groups["categorical"].vocabularies_["k"]) == ["a", "b"]
    want = run.predict(read_table(path, data=spec.data))
    assert run.predict(path).equals(want)
    out = tmp_path / "preds.csv"
    assert hydranet.cli.main(["predict", str(run.path), path, "--output", str(out)]) == 0
    got = pacsv.read_csv(out)["y"].to_numpy()
    np.testing.assert_allclose(got, want["y"].to_numpy(), rtol=1e-6)


# ---------------------------------------------------------------- the registry
def test_unknown_source_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown source 'nope'; valid: files, frame, spark"):
        open_source("x.csv", DataSpec(source="nope"))
    with pytest.raises(SpecError, match=r"data\.source.*valid: files, frame, spark"):
        Spec.from_dict(
            {"data": {"source": "nope", "train": "x"}, "tasks": [{"name": "y", "kind": "binary"}]}
        )
    with pytest.raises(UserError, match="not a hydranet.data.sources.Source subclass"):
        open_source("x", DataSpec(source="os.path:join"))


class Counter(Source):
    """A user's source: ``n`` rows (``data.source_params``) counted from ``location``."""

    @property
    def schema(self) -> pa.Schema:
        return pa.schema({"i": pa.int64(), "parity": pa.string()})

    def batches(self, columns=None, batch_rows=65_536) -> Iterator[pa.RecordBatch]:
        self.check_columns(columns)
        start, n = int(self.location), self.options.source_params["n"]
        for lo in range(0, n, batch_rows):
            i = np.arange(start + lo, start + min(n, lo + batch_rows))
            batch = pa.record_batch({"i": i, "parity": np.where(i % 2, "odd", "even")})
            yield batch.select(columns) if columns else batch


def test_user_source_by_import_path():
    name = f"{__name__}:Counter"
    data = DataSpec(source=name, source_params={"n": 40}, train="100", test_fraction=0.25)
    src = open_source(data.train, data)
    assert isinstance(src, Counter)
    assert name not in SOURCES.names()
    tables, rows = load_splits(data, ["i", "parity"], with_rows=True)
    assert tables["test"].num_rows == 10 and tables["train"].num_rows == 30
    np.testing.assert_array_equal(tables["test"].column("i").to_numpy(), 100 + rows["test"])
    assert [b.num_rows for b in iter_batches("0", columns=["i"], batch_rows=16, data=data)] == [
        16,
        16,
        8,
    ]
    spec = Spec.from_dict(
        {
            "data": data.model_dump(),
            "tasks": [{"name": "parity", "kind": "binary", "positive": "odd"}],
        }
    )
    assert spec.data.source == name


# ---------------------------------------------------------------- Spark
@pytest.mark.spark
def test_spark_source_reads_a_dataframe(tmp_path, spark):
    table = _table(100)
    pq.write_table(table, tmp_path / "d.parquet")
    df = spark.read.parquet(str(tmp_path / "d.parquet")).coalesce(1)
    src = open_source(df)
    assert type(src) is SOURCES.get("spark")
    assert src.schema.names == ["id", "x", "k", "y"]
    got = read_table(df, columns=["id", "k"])
    assert got.equals(table.select(["id", "k"]))
    assert max(b.num_rows for b in iter_batches(df, columns=["x"], batch_rows=32)) == 32
    with pytest.raises(DataError, match="column 'nope' not found in the Spark DataFrame"):
        iter_batches(df, columns=["nope"])


def test_text_from_a_frame_is_arrow_string_as_from_a_file():
    """pandas 3 keeps text in its ``str`` dtype, which Arrow reads as ``large_string``; the
    frame source gives ``string``, the type of the same column read from a file (pandas 2
    gives ``string`` already, so the large table here stands in for pandas 3's)."""
    from hydranet.data.sources.frame import plain_strings

    large = pa.table(
        {"k": pa.array(["a", None, "b"], pa.large_string()), "x": [1.0, 2.0, 3.0]},
        metadata={b"pandas": b"{}"},
    )
    got = plain_strings(large)
    assert (
        got.schema.field("k").type == pa.string() and got.schema.metadata == large.schema.metadata
    )
    assert got.column("k").to_pylist() == ["a", None, "b"]
    assert plain_strings(large.schema).field("k").type == pa.string()
    plain = pa.table({"x": [1.0]})
    assert plain_strings(plain) is plain  # nothing to cast: the same table
    assert (
        read_table(large, columns=["k"]).schema.field("k").type == pa.large_string()
    )  # Arrow in, as given
