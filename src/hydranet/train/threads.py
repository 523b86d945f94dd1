"""``train.threads = "auto"``: time training steps at each thread count, keep the fastest.

On a small model the fastest CPU thread count depends on the machine and on what else runs
on it, more than on the model: on a 2-core container the census example's step took 7.4 ms
on one thread and 10.7 ms on two (each parallel op wakes the sleeping OpenMP threads), and
with another process busy on one core, two threads took 14-18 ms against 6.4 ms on one
(README, "How many CPU threads"). So "auto" measures instead of guessing: at the start of
every epoch it times a few real training steps at each candidate count (all threads, then
one), after a warm-up step each, and trains the rest of the epoch on the faster. The steps
timed are the run's own steps, in order, so nothing is repeated or skipped; only the thread
count of some steps differs. That changes the rounding of some kernels (the categorical
embedding's gradient takes another path on several threads): the census example trained 30
epochs with "auto" and with two threads ended at the same best epoch with test AUCs equal to
seven decimals, not bit for bit; runs that must repeat exactly set a number.

A step is timed with ``time.perf_counter`` around ``Trainer.train_step``: on the CPU the step
has finished when it returns.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import torch

__all__ = ["ThreadChooser"]


class ThreadChooser:
    """Chooses, per epoch, the faster of ``most`` threads and one thread.

    ``start_epoch()`` begins the measurement; while ``measuring``, each step's seconds go to
    ``observe``; once every candidate has ``steps`` timed steps (after ``warmup`` untimed
    ones), the fastest median wins and is set with ``set_threads``. An epoch too short to
    measure everything keeps the fastest so far (or the current count when nothing was timed).
    """

    def __init__(
        self,
        most: int,
        *,
        steps: int = 4,
        warmup: int = 1,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        report: Callable[[str], None] | None = None,
    ):
        self.candidates = [most, 1] if most > 1 else [1]
        self.steps, self.warmup = steps, warmup
        self.set_threads = set_threads
        self.report = report or (lambda line: print(f"hydranet: {line}", file=sys.stderr))
        self.chosen = self.candidates[0]
        self._reported = False
        self.medians: dict[int, float] = {}
        self._queue: list[int] = []
        self._seen = 0
        self._times: dict[int, list[float]] = {}

    @property
    def measuring(self) -> bool:
        return bool(self._queue)

    def start_epoch(self) -> None:
        if len(self.candidates) == 1:
            return
        self._queue = list(self.candidates)
        self._times = {c: [] for c in self.candidates}
        self._seen = 0
        self.set_threads(self._queue[0])

    def observe(self, seconds: float) -> None:
        """One step's seconds at the current candidate."""
        current = self._queue[0]
        self._seen += 1
        if self._seen > self.warmup:
            self._times[current].append(seconds)
        if len(self._times[current]) >= self.steps:
            self._queue.pop(0)
            self._seen = 0
            if self._queue:
                self.set_threads(self._queue[0])
            else:
                self._choose()

    def end_epoch(self) -> int:
        """Settle an unfinished measurement; the thread count the epoch ended on."""
        if self._queue:
            self._queue = []
            self._choose()
        return self.chosen

    def _choose(self) -> None:
        self.medians = {c: statistics.median(t) for c, t in self._times.items() if t}
        best = min(self.medians, key=self.medians.get) if self.medians else self.chosen
        if best != self.chosen or not self._reported:  # said once, then on every change
            self._reported = True
            others = ", ".join(
                f"{c}: {self.medians[c] * 1e3:.1f} ms" for c in self.candidates if c in self.medians
            )
            noun = "thread" if best == 1 else "threads"
            self.report(f"train.threads = 'auto' trains on {best} {noun} (a step on {others})")
        self.chosen = best
        self.set_threads(best)
