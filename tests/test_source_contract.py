"""Contract tests generated from ``SOURCES.names()``: every source, the same checks.

A new source registered in :mod:`hydranet.data.sources` is picked up here without anyone
writing a test. Built from its ``example(tmp_path)`` (an object it reads: a file, a frame),
it must accept that object and be the one ``data.source = "<name>"`` opens; yield through
``batches()`` exactly the rows ``table()`` reads, in batches of at most ``batch_rows``;
report a schema equal to the table's without reading the rows; read only the ``columns``
asked for, in the order asked; and refuse a missing column with a one-line DataError that
names it. ``tests/test_sources.py`` holds the sources' own behaviour (CSV options, UTF-8).
The spark source runs only where Java and pyspark are (marker ``spark``).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from hydranet.data.sources import SOURCES, open_source
from hydranet.data.sources.base import example_rows
from hydranet.errors import DataError
from hydranet.spec import DataSpec

NAMES = [pytest.param(n, marks=pytest.mark.spark) if n == "spark" else n for n in SOURCES.names()]

BUILT_IN = ("files", "frame", "spark")


def _name(param) -> str:
    return param if isinstance(param, str) else param.values[0]


@pytest.fixture
def case(request, tmp_path):
    """The source's name, class, example object and the source opened on it."""
    name = request.param
    if name == "spark":
        request.getfixturevalue("spark")  # the example uses the active session
    cls = SOURCES.get(name)
    obj = cls.example(tmp_path)
    return name, cls, obj, open_source(obj, DataSpec(source=name))


def _cases(test):
    return pytest.mark.parametrize("case", NAMES, indirect=True)(test)


@_cases
def test_accepts_its_example_and_is_opened_by_name(case):
    name, cls, obj, src = case
    assert type(src) is cls
    assert cls.accepts(obj)
    # auto picks it too, unless an earlier source also takes the object
    takers = [n for n in SOURCES.names() if SOURCES.get(n).accepts(obj)]
    assert name in takers
    if takers[0] == name:
        assert type(open_source(obj)) is cls
    assert isinstance(src.name, str) and src.name and "\n" not in src.name


@_cases
def test_batches_yield_the_table(case):
    _, _, _, src = case
    table = src.table()
    assert table.num_rows > 16, "the example needs rows for more than one batch"
    batches = list(src.batches(batch_rows=16))
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert len(batches) > 1 and all(0 < b.num_rows <= 16 for b in batches)
    assert pa.Table.from_batches(batches).equals(table)
    assert pa.Table.from_batches(list(src.batches())).equals(table)
    assert table.equals(src.table())  # reading twice reads the same


@_cases
def test_schema_is_the_tables(case):
    _, _, _, src = case
    schema = src.schema
    assert isinstance(schema, pa.Schema)
    table = src.table()
    assert schema == table.schema
    assert table.num_columns >= 2


@_cases
def test_columns_are_respected(case):
    _, _, _, src = case
    full = src.table()
    cols = full.column_names[::-1][:2]  # a subset, not in the source's order
    got = src.table(cols)
    assert got.column_names == cols
    assert got.equals(full.select(cols))
    batches = list(src.batches(cols, batch_rows=16))
    assert all(b.schema.names == cols for b in batches)
    assert pa.Table.from_batches(batches).equals(got)


@_cases
def test_a_missing_column_names_it(case):
    _, _, _, src = case
    keep = src.schema.names[0]
    for read in (lambda c: src.table(c), lambda c: list(src.batches(c))):
        with pytest.raises(DataError, match=r"column 'nope' not found in ") as e:
            read([keep, "nope"])
        assert src.name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", [p for p in NAMES if _name(p) in BUILT_IN], indirect=True)
def test_the_built_in_examples_read_as_the_same_rows(case):
    # the built-ins' examples all hold example_rows (as CSV text, a DataFrame, Parquet in
    # Spark); each must read them back with their types and missing values
    _, _, _, src = case
    assert src.table().equals(example_rows())
