"""The ``spark`` source: a Spark DataFrame's rows on the driver as Arrow batches.

It reads with :func:`arrow_batches` (one partition in driver
memory at a time). pyspark is imported only when a Spark DataFrame is read, and a
DataFrame is recognised by its class, so this module loads without the extra.
Training on a DataFrame (``hydranet.spark.train``) still stages Parquet on the
executors and reads it with the files source: its rows never pass through the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from hydranet.data.sources.base import SOURCES, Source, example_rows, rechunk


def _is_spark_frame(obj: Any) -> bool:
    return any(
        c.__name__ == "DataFrame" and c.__module__.startswith("pyspark.sql")
        for c in type(obj).__mro__
    )


@SOURCES.register("spark")
class SparkSource(Source):
    """A ``pyspark.sql.DataFrame`` (needs ``pip install 'hydranet[spark]'``)."""

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return _is_spark_frame(obj)

    @classmethod
    def example(cls, tmp_path: Path) -> Any:
        """A Spark DataFrame of :func:`example_rows`, read from Parquet in the active
        session (a local one is started when there is none)."""
        import pyarrow.parquet as pq
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is None:
            spark = SparkSession.builder.master("local[1]").getOrCreate()
        path = Path(tmp_path) / "example.parquet"
        pq.write_table(example_rows(), path)
        # one partition: the rows come back in the file's order
        return spark.read.parquet(str(path)).coalesce(1)

    @property
    def name(self) -> str:
        return "the Spark DataFrame"

    @property
    def schema(self) -> pa.Schema:
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(self.location.schema)

    def batches(
        self, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:

        self.check_columns(columns)
        return rechunk(arrow_batches(self.location, columns), batch_rows)


def arrow_batches(df: Any, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Arrow record batches of ``df`` on the driver, one partition in memory at a time."""
    sel = df.select(*columns) if columns else df

    def to_ipc(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, b.schema) as writer:
                writer.write_batch(b)
            yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})

    for row in sel.mapInArrow(to_ipc, "ipc binary").toLocalIterator(prefetchPartitions=False):
        with pa.ipc.open_stream(row.ipc) as reader:
            yield from reader
