"""What the training loop tells the outside: callbacks for everything that only observes it.

The loop (:class:`~hydranet.train.trainer.Trainer`) calls, in order, for every callback:

* ``on_step_end(trainer)`` after each optimizer step;
* ``on_epoch_end(trainer, record)`` once the epoch's record (losses, validation metrics,
  weights, lr, rows/s) is complete, before the epoch counter moves on;
* ``after_epoch(trainer)`` once it has (the state a checkpoint must hold);
* ``on_train_end(trainer)`` after the last epoch, before the model is written.

A callback with state that a resume must restore (early stopping's best value) has
``state_dict`` / ``load_state_dict``; its keys go into the checkpoint's loop state (so they
must not clash with another callback's). Every callback
here runs its side effects (files, lines) on the main rank only. An experiment-tracking
backend (MLflow, TensorBoard) is one more class with ``on_epoch_end``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from hydranet import rundir
from hydranet.errors import SpecError
from hydranet.tasks import HIGHER_IS_BETTER
from hydranet.train.state_io import atomic_save_tensors, load_tensors

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from hydranet.spec import EarlyStopping as EarlyStoppingSpec
    from hydranet.train.distributed import Distributed
    from hydranet.train.progress import Progress


class Loop(Protocol):
    """What callbacks may read of the loop (the :class:`~hydranet.train.trainer.Trainer`; a
    Protocol so that this module, which the trainer builds on, does not import it back)."""

    out: Path
    dist: Distributed
    progress: Progress
    model: nn.Module
    eval_model: nn.Module  # the full model (the training one may hold shards)
    epoch: int
    step: int

    def checkpoint(self) -> None: ...


__all__ = ["Callback", "Checkpoints", "EarlyStopping", "EpochLines", "MetricsLog"]


class Callback:
    def on_step_end(self, trainer: Loop) -> None:
        pass

    def on_epoch_end(self, trainer: Loop, record: dict[str, Any]) -> None:
        pass

    def after_epoch(self, trainer: Loop) -> None:
        pass

    def on_train_end(self, trainer: Loop) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MetricsLog(Callback):
    """One JSON line per epoch in ``metrics.jsonl`` (fsync'ed: a kill keeps every line written)."""

    def on_epoch_end(self, trainer, record):
        if trainer.dist.is_main:
            rundir.append_metrics(trainer.out, record)


class EpochLines(Callback):
    """One line per epoch on stderr: losses, validation metrics, rows/s."""

    def on_epoch_end(self, trainer, record):
        if trainer.dist.is_main:
            trainer.progress.epoch_line(record)


class Checkpoints(Callback):
    """The whole training state every ``train.checkpoint_every`` steps and after each epoch."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer):
        if self.every and trainer.step % self.every == 0:
            trainer.checkpoint()

    def after_epoch(self, trainer):
        trainer.checkpoint()


class EarlyStopping(Callback):
    """Stops when ``train.early_stopping.metric`` has not improved for ``patience`` epochs;
    the best epoch's weights are kept in ``best.safetensors`` and restored at the end.

    Rank 0 alone evaluates; its decision is broadcast, so every rank stops together.
    """

    def __init__(self, cfg: EarlyStoppingSpec | None):
        self.cfg = cfg
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped = False

    def on_epoch_end(self, trainer, record):
        if self.cfg is not None and "val" in record:
            self.update(trainer, record["val"], record["val_loss"])
        if trainer.dist.enabled:
            self.best, self.best_epoch, self.bad_epochs, self.stopped = trainer.dist.broadcast(
                (self.best, self.best_epoch, self.bad_epochs, self.stopped)
            )

    def update(self, trainer, metrics: dict[str, dict[str, float]], val_loss: dict[str, float]):
        es = self.cfg
        value, higher = watched(es.metric, es.mode, metrics, val_loss)
        improved = self.best is None or (
            value > self.best + es.min_delta if higher else value < self.best - es.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, trainer.epoch + 1, 0
            atomic_save_tensors(trainer.eval_model.state_dict(), trainer.out / rundir.BEST)
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= es.patience:
                self.stopped = True

    def on_train_end(self, trainer):
        if self.cfg is not None and (trainer.out / rundir.BEST).exists():
            trainer.eval_model.load_state_dict(load_tensors(trainer.out / rundir.BEST)[0])

    def state_dict(self):
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped,
        }

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.stopped = state["bad_epochs"], state["stopped_early"]


def mean_direction(names: list[str]) -> bool:
    """Whether higher is better for the mean of these metrics (each task's first); a mean of
    metrics that go opposite ways (AUC and RMSE) means nothing, so it is refused."""
    ways = {HIGHER_IS_BETTER.get(n, True) for n in names}
    if len(ways) != 1:
        raise SpecError(
            [
                (
                    "train.early_stopping.metric",
                    f"'mean' needs every task's first metric to be better the same way; got {', '.join(names)}",
                )
            ]
        )
    return ways.pop()


def watched(
    metric: str, mode: str, metrics: dict[str, dict[str, float]], val_loss: dict[str, float]
) -> tuple[float, bool]:
    """The watched value and whether higher is better."""
    if metric == "loss":
        vals = list(val_loss.values())
        return sum(vals) / len(vals), mode == "max"
    if metric == "mean":
        # each task's first metric, in the order the task reports them
        firsts = [next(iter(ms.items())) for ms in metrics.values() if ms]
        higher = mean_direction([n for n, _ in firsts])
        higher = higher if mode == "auto" else mode == "max"
        return sum(v for _, v in firsts) / len(firsts), higher
    task, _, name = metric.partition(".")
    if task not in metrics or name not in metrics[task]:
        options = [f"{t}.{m}" for t, ms in metrics.items() for m in ms] + ["loss"]
        raise SpecError(
            [
                (
                    "train.early_stopping.metric",
                    f"unknown metric {metric!r}; allowed: {', '.join(options)}",
                )
            ]
        )
    higher = HIGHER_IS_BETTER.get(name, True) if mode == "auto" else mode == "max"
    return metrics[task][name], higher
