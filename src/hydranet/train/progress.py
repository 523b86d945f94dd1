"""Progress reporting: a rich progress bar on a terminal, one log line per epoch otherwise."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


class _Bar:
    # the fields (running losses) are read from the device at most this often: reading them
    # is a host sync, which on a GPU would stall the queue of kernels every step
    FIELDS_EVERY_S = 0.5

    def __init__(self, progress, task_id):
        self._progress, self._task = progress, task_id
        self._fields_at = float("-inf")

    def advance(self, fields: Callable[[], str] | None = None) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if fields is not None and now - self._fields_at >= self.FIELDS_EVERY_S:
            self._fields_at = now
            self._progress.update(self._task, advance=1, fields=fields())
        else:
            self._progress.update(self._task, advance=1)


class Progress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        # a bar on a terminal; otherwise (or with enabled=False) one line per epoch
        self.interactive = self.stream.isatty() if enabled is None else enabled

    @contextlib.contextmanager
    def epoch(self, epoch: int, epochs: int, steps: int, start: int = 0) -> Iterator[_Bar]:
        if not self.interactive:
            yield _Bar(None, None)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = [
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[fields]}"),
        ]
        with RichProgress(*columns, console=Console(file=self.stream), transient=True) as p:
            task_id = p.add_task("train", total=steps, completed=start, fields="")
            yield _Bar(p, task_id)

    def epoch_line(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']}"]
        parts.append("loss " + " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items()))
        for task, ms in record.get("val", {}).items():
            parts.append(
                f"{task}: " + " ".join(f"{m}={v:.4f}" for m, v in ms.items() if v is not None)
            )
        parts.append(f"{record['rows_per_s']:,.0f} rows/s")
        # one write, newline included: a signal that ends the process (a torchrun rank stopped
        # by SIGTERM) cannot leave half a line for the next message to run into
        self.stream.write(" | ".join(parts) + "\n")
        self.stream.flush()
