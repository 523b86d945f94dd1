"""One trial: the metric it is judged by, the pruning callback, and its training.

A trial trains the trial's spec into ``DIR/trials/<number>`` with the library's own loop
(:func:`hydranet.train.trainer.setup`); after every epoch the watched validation value goes
to Optuna (``trial.report``), and when the pruner says so the loop stops after that epoch's
checkpoint. A pruned trial's directory is still a whole Run (its weights and final metrics
are written), so every trial directory can be evaluated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydranet import rundir
from hydranet.errors import SpecError, TrainingDiverged, UserError
from hydranet.spec import Spec
from hydranet.tasks import HIGHER_IS_BETTER, TASK_KINDS
from hydranet.train.callbacks import Callback, EpochLines

if TYPE_CHECKING:
    import optuna

# what "mean" averages: each task's own higher-is-better summary, so that tasks of different
# kinds (an AUC, an accuracy, an R²) can share one mean
_MEAN_OF = {
    "binary": ("auc", "accuracy"),
    "multiclass": ("accuracy", "macro_f1"),
    "multilabel": ("macro_auc", "micro_auc"),
    "regression": ("r2",),
}

TRIAL_FILE = "trial.json"


@dataclass(frozen=True)
class Metric:
    """What a trial is judged by: ``parts`` are (task, metric) pairs averaged, or none for
    the mean validation loss."""

    name: str
    parts: tuple[tuple[str, str], ...]
    maximize: bool

    def value(
        self, metrics: dict[str, dict[str, float]], val_loss: dict[str, float] | None = None
    ) -> float:
        if not self.parts:
            losses = list((val_loss or {}).values())
            return sum(losses) / len(losses) if losses else float("nan")
        vals = [metrics.get(task, {}).get(name) for task, name in self.parts]
        vals = [float("nan") if v is None else float(v) for v in vals]
        return sum(vals) / len(vals)


def resolve_metric(spec: Spec) -> Metric:
    """``tune.metric`` and ``tune.direction`` against the spec's tasks (SpecError naming the key)."""
    tune = spec.tune
    assert tune is not None
    names = {t.name: _task_metrics(t) for t in spec.tasks}
    if tune.metric == "loss":
        metric = Metric("loss", (), maximize=False)
    elif tune.metric == "mean":
        parts = []
        for t in spec.tasks:
            chosen = next((m for m in _MEAN_OF.get(t.kind, ()) if m in names[t.name]), None)
            chosen = chosen or next(
                (m for m in names[t.name] if HIGHER_IS_BETTER.get(m, True)), None
            )
            if chosen is None:
                raise SpecError(
                    [
                        (
                            "tune.metric",
                            f"task {t.name!r} reports no metric where higher is better to average; name one metric, e.g. '{t.name}.{names[t.name][0]}'",
                        )
                    ]
                )
            parts.append((t.name, chosen))
        metric = Metric("mean " + ", ".join(f"{t}.{m}" for t, m in parts), tuple(parts), True)
    else:
        task, _, name = tune.metric.partition(".")
        if task not in names or name not in names[task]:
            options = [f"{t}.{m}" for t, ms in names.items() for m in ms]
            raise SpecError(
                [
                    (
                        "tune.metric",
                        f"unknown metric {tune.metric!r}; allowed: mean, loss, {', '.join(options)}",
                    )
                ]
            )
        metric = Metric(tune.metric, ((task, name),), HIGHER_IS_BETTER.get(name, True))
    if tune.direction != "auto":
        metric = Metric(metric.name, metric.parts, tune.direction == "maximize")
    return metric


def _task_metrics(task) -> list[str]:
    if task.metrics:
        return list(task.metrics)
    try:
        return list(TASK_KINDS.get(task.kind).all_metrics)
    except UserError:
        return []


class Pruning(Callback):
    """Reports the watched validation value after each epoch; stops the loop, after the epoch's
    checkpoint, when Optuna's pruner says the trial lags the others."""

    def __init__(self, trial: optuna.Trial, metric: Metric, epochs: int):
        self.trial, self.metric, self.epochs = trial, metric, epochs
        self.prune = False
        self.last: float | None = None

    def on_epoch_end(self, trainer, record):
        if "val" not in record:
            return
        self.last = self.metric.value(record["val"], record.get("val_loss"))
        self.trial.report(self.last, record["epoch"])
        self.prune = self.trial.should_prune()

    def after_epoch(self, trainer):
        # after the last epoch the training is over anyway: the trial completes
        if self.prune and trainer.epoch < self.epochs:
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {trainer.epoch}")


def run_trial(
    trial: optuna.Trial, spec: Spec, out: Path, metric: Metric, params: dict[str, Any]
) -> float:
    """Train one trial's spec into ``out``; its value, or :class:`optuna.TrialPruned`."""
    import optuna

    from hydranet.train.trainer import setup

    t0 = time.perf_counter()
    trainer = setup(spec, out, progress=False)
    try:
        if "validation" not in trainer.splits:
            raise UserError(
                "hydranet tune judges trials on the validation split: give data.validation or data.validation_fraction"
            )
        pruning = Pruning(trial, metric, trainer.cfg.epochs)
        # one line per trial (the study's), not one per epoch of every trial
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, EpochLines)]
        trainer.callbacks.append(pruning)
        try:
            trainer.fit()
        except optuna.TrialPruned:
            trainer.finish()  # the pruned run is whole: weights and final metrics
            _write(out, trial, params, "pruned", pruning.last, t0, epoch=trainer.epoch)
            raise
        except TrainingDiverged as e:
            # a loss went NaN: a lost trial, not a broken study
            trial.set_user_attr("diverged", str(e))
            _write(out, trial, params, "diverged", None, t0, epoch=trainer.epoch)
            raise optuna.TrialPruned(f"diverged: {e}") from None
    finally:
        trainer.dist.close()
    final = rundir.read_json(out / rundir.FINAL)
    value = metric.value(final.get("validation", {}))
    if not math.isfinite(value):
        trial.set_user_attr("undefined", f"the validation {metric.name} is undefined")
        _write(out, trial, params, "undefined", None, t0, epoch=trainer.epoch)
        raise optuna.TrialPruned(f"the validation {metric.name} is undefined")
    _write(out, trial, params, "complete", value, t0, epoch=trainer.epoch)
    return value


def _write(out: Path, trial, params, state: str, value, t0: float, epoch: int) -> None:
    rundir.write_json(
        out / TRIAL_FILE,
        {
            "number": trial.number,
            "state": state,
            "value": value,
            "epochs": epoch,
            "params": params,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
