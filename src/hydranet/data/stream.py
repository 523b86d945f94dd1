"""Out-of-core training data: a Parquet (or CSV) source read in bounded chunks.

With ``data.streaming = true`` the training split is never held in memory:

* fitting is one streaming pass: ``Preprocessor.partial_fit`` per record batch, and the
  tasks' label statistics (positive counts, class sets, target moments) merged chunk by
  chunk (:func:`fit_streaming`), so the fitted state equals an in-memory fit up to float
  summation order;
* each epoch (:class:`StreamingLoader`) visits the row groups of every Parquet file (whole
  files for CSV) in a seeded random order, reads them ``chunk_rows`` at a time on a
  background thread, encodes each chunk to tensors, and fills a shuffle buffer of
  ``shuffle_buffer_rows`` rows; a full buffer is permuted and cut into batches, and the
  rows short of a whole batch are carried into the next buffer. Rows therefore mix within
  a buffer and across row groups only through the row-group order: set the buffer to a few
  row groups' worth for a good shuffle.

Memory is bounded by the buffer (twice, while it is concatenated), the prefetch queue
(``prefetch`` chunks) and one row group's column chunks in the Parquet reader, whatever
the number of rows. An epoch has ``ceil(rows / batch_size)`` batches, as in memory;
resuming mid-epoch replays the epoch's deterministic stream up to the saved position
without training on it (I/O only). Under DDP every rank reads the same stream and takes
its slice of each global batch, as the in-memory loader does.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch

from hydranet.data.loader import Batch, ResumablePosition, TensorData, build_tensor_data
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import FileSource, _first_line
from hydranet.errors import DataError, UserError
from hydranet.spec_tables import SourceOptions
from hydranet.tasks import Task

__all__ = ["StreamingLoader", "StreamingSplit", "fit_streaming"]


# ---------------------------------------------------------------- fitting
def fit_streaming(
    preprocessor: Preprocessor, tasks: Sequence[Task], batches: Iterator[pa.RecordBatch]
) -> int:
    """Fit the preprocessor and the tasks in one pass over ``batches``; the number of rows."""
    for t in tasks:
        if type(t).fit is not Task.fit:  # its own fit, not the mergeable statistics
            raise UserError(
                f"task {t.name!r}: kind {t.kind!r} fits on the whole table and cannot be fitted in a streaming pass; set data.streaming = false"
            )
    stats = [t.new_stats() for t in tasks]
    rows = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        preprocessor.partial_fit(table)
        for t, s in zip(tasks, stats, strict=True):
            t.update_stats(s, table)
        rows += table.num_rows
    preprocessor.finish()
    for t, s in zip(tasks, stats, strict=True):
        t.finish_fit(s)
    return rows


# ---------------------------------------------------------------- the split
@dataclass
class StreamingSplit:
    """The training split as a source to stream from, with the fitted transforms."""

    path: str
    format: str
    columns: list[str]
    preprocessor: Preprocessor
    tasks: list[Task]
    rows: int
    shuffle_buffer_rows: int = 262_144
    chunk_rows: int = 65_536
    pieces: list[ds.Fragment] = field(default_factory=list, repr=False)
    schema: pa.Schema | None = field(default=None, repr=False)
    # what reads the file: its CSV options clean every batch as for an in-memory split
    source: FileSource | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        path: str,
        format: str,
        columns: list[str],
        preprocessor: Preprocessor,
        tasks: list[Task],
        rows: int,
        options: SourceOptions | None = None,
        **kwargs: int,
    ) -> StreamingSplit:
        options = options if options is not None else SourceOptions()
        if format != options.format:
            options = options.model_copy(update={"format": format})
        source = FileSource(path, options)
        source.check_columns(columns)
        dataset = source.dataset
        pieces: list[ds.Fragment] = []
        try:
            for frag in dataset.get_fragments():
                if isinstance(frag, ds.ParquetFileFragment):
                    pieces += frag.split_by_row_group()  # one piece per row group
                else:
                    pieces.append(frag)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read {path}: {_first_line(e)}") from None
        return cls(
            path,
            format,
            columns,
            preprocessor,
            tasks,
            rows,
            pieces=pieces,
            schema=dataset.schema,
            source=source,
            **kwargs,
        )

    def __len__(self) -> int:
        return self.rows

    def loader(
        self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> StreamingLoader:
        return StreamingLoader(self, batch_size, seed=seed, rank=rank, world_size=world_size)

    def record_batches(self, order: Sequence[int]) -> Iterator[pa.RecordBatch]:
        """The needed columns of the pieces in ``order``, ``chunk_rows`` rows at most per batch.

        One scanner per piece with minimal read-ahead: a dataset-wide scanner reads ahead
        of a slow consumer (the fitting pass) by more and more row groups, so its memory
        grows with the file.
        """
        for i in order:
            scanner = ds.Scanner.from_fragment(
                self.pieces[i], schema=self.schema, columns=self.columns,
                batch_size=self.chunk_rows, batch_readahead=1, fragment_readahead=1,
            )  # fmt: skip
            try:
                for rb in scanner.to_batches():
                    if rb.num_rows:
                        yield rb if self.source is None else self.source.clean(rb)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"cannot read {self.path}: {_first_line(e)}") from None

    def chunks(self, order: Sequence[int]) -> Iterator[TensorData]:
        """Encoded chunks of the pieces in ``order``."""
        for rb in self.record_batches(order):
            yield build_tensor_data(pa.Table.from_batches([rb]), self.preprocessor, self.tasks)


def open_streaming(
    path: str,
    format: str,
    columns: list[str],
    preprocessor: Preprocessor,
    tasks: list[Task],
    *,
    shuffle_buffer_rows: int,
    chunk_rows: int,
    options: SourceOptions | None = None,
) -> StreamingSplit:
    """Fit ``preprocessor`` and ``tasks`` in one streaming pass over ``path``; the split to train
    on. ``options`` (the spec's ``[data]``) say how the files are read (CSV options)."""
    split = StreamingSplit.open(
        path,
        format,
        columns,
        preprocessor,
        tasks,
        0,
        options,
        shuffle_buffer_rows=shuffle_buffer_rows,
        chunk_rows=chunk_rows,
    )
    split.rows = fit_streaming(preprocessor, tasks, split.record_batches(range(len(split.pieces))))
    if split.rows == 0:
        raise DataError(f"{path} has no rows")
    return split


# ---------------------------------------------------------------- the loader
class StreamingLoader(ResumablePosition):
    """Shuffled batches streamed from a :class:`StreamingSplit`; the BatchLoader interface.

    ``state_dict`` is ``{"epoch", "position", "seed"}`` like BatchLoader's, and an epoch's
    stream depends only on ``(seed, epoch)``, so a restored loader yields exactly the
    remaining batches of the epoch.
    """

    def __init__(
        self,
        split: StreamingSplit,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return math.ceil(self.split.rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        skip = self.position
        for b, (data, idx) in enumerate(self._blocks(self.epoch)):
            if b < skip:
                continue  # replaying up to a resumed position
            if self.world_size > 1:
                idx = torch.tensor_split(idx, self.world_size)[self.rank]
            self.position = b + 1  # before the yield: a checkpoint now resumes at b + 1
            yield data.take(idx)
        self.set_epoch(self.epoch + 1)

    def _blocks(self, epoch: int) -> Iterator[tuple[TensorData, torch.Tensor]]:
        """(buffer, row indices of one global batch) for every batch of the epoch."""
        bs, cap = self.batch_size, max(self.split.shuffle_buffer_rows, self.batch_size)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split.pieces))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        pending: list[TensorData] = []
        rows = 0
        for chunk in _prefetched(self.split.chunks(order.tolist()), self.prefetch):
            pending.append(chunk)
            rows += len(chunk)
            if rows < cap:
                continue
            data = TensorData.concat(pending)
            perm = torch.randperm(len(data), generator=gen)
            full = len(data) // bs * bs
            for start in range(0, full, bs):
                yield data, perm[start : start + bs]
            pending = [data.take(perm[full:])] if full < len(data) else []
            pending = [
                TensorData(p.features, p.targets, p.masks) for p in pending
            ]  # Batch -> TensorData
            rows = len(data) - full
            del data, perm
        if rows:
            data = TensorData.concat(pending)
            perm = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), bs):
                yield data, perm[start : start + bs]


_DONE = object()


def _prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced on a background thread, at most ``depth`` ahead (bounded memory).

    Arrow decoding and the numpy/torch encoding release the GIL, so reading the next chunk
    overlaps the training step. Stopping early (a break, an exception) stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=produce, name="hydranet-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
