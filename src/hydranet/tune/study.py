"""``hydranet tune``: an Optuna study of a spec's ``[tune.space]``, shared through storage.

The study lives in ``DIR/study.db``, Optuna's SQLite storage (RDBStorage). SQLite rather
than the journal file: a transaction survives ``kill -9`` of its writer (the journal rolls a
half-written one back, and the kernel drops a dead process's locks at once), and RDBStorage
has heartbeats, which Optuna's JournalStorage does not. A trial whose worker died stops
beating; after two heartbeats (``tune.heartbeat_s``) any worker fails it and queues its
parameters again (``tune.retries`` times). Several processes run the same command with the
same ``--out`` and share the study; ``--trials N`` is the number of finished (complete or
pruned) trials of the whole study. Workers on several machines need a shared database
(``--storage postgresql://...``): SQLite's locks are not safe on NFS.

A worker runs trials while the study has fewer than N finished or running ones, then waits
for the running ones of other workers (one left by a killed worker turns stale and is run
again), so every worker returns when the study is done. ``DIR/best`` then links the best
trial's run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydranet import rundir
from hydranet.errors import UserError
from hydranet.spec import Spec
from hydranet.tune import report, space
from hydranet.tune.objective import Metric, resolve_metric, run_trial

STUDY_NAME = "hydranet"
STUDY_DB = "study.db"
BEST = "best"
BEST_JSON = "best.json"
TRIALS_DIR = "trials"


@dataclass
class TuneResult:
    """The study's best trial: its number, value, spec values and run directory (``DIR/best``)."""

    number: int
    value: float
    params: dict[str, Any]
    path: Path
    metric: str


def tune(
    spec: Spec | str | Path,
    out: str | Path,
    trials: int,
    *,
    storage: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or join, or resume) the study of ``spec``'s ``[tune]`` in ``out`` until it has
    ``trials`` finished trials; the best trial as a :class:`TuneResult`."""
    if not isinstance(spec, Spec):
        spec = Spec.load(spec)
    if trials < 1:
        raise UserError(f"--trials must be at least 1; got {trials}")
    space.check(spec)
    metric = resolve_metric(spec)
    optuna = _optuna()
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if (out / rundir.SPEC).exists():
        raise UserError(f"--out {out} holds a training run; give tune a directory of its own")
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # heartbeats and the retry callback are marked experimental; they are what we rely on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        verbosity = optuna.logging.get_verbosity()
        # our one line per trial instead; and a failed trial is our error line, not its traceback
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            with _exclusive(out / ".open.lock"):
                study = _open_study(optuna, spec, metric, out, storage)
            _run(optuna, study, spec, metric, out, trials, echo)
            best = _best(study, out, metric, spec.tune.space)
            report.write(study, out, spec.tune.space, echo)
        finally:
            optuna.logging.set_verbosity(verbosity)
    echo(
        f"study done: best trial {best.number}, validation {metric.name} {best.value:.4f} -> {best.path}"
    )
    return best


@contextlib.contextmanager
def _exclusive(path: Path):
    """One worker at a time opens the study: two that start together otherwise both create
    its tables (one then fails) and both queue ``tune.enqueue``. The kernel releases the lock
    of a killed process."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock; starting workers one by one works
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("hydranet tune needs Optuna: pip install 'hydranet[tune]'") from None
    return optuna


def _open_study(optuna, spec: Spec, metric: Metric, out: Path, url: str | None):
    tune = spec.tune
    url = url or f"sqlite:///{(out / STUDY_DB).resolve()}"
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=tune.heartbeat_s,
            grace_period=2 * tune.heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=tune.retries
            ),
        )
    except Exception as e:  # a bad URL, a missing driver, an unreadable database file
        raise UserError(f"cannot open the study storage {url}: {str(e).splitlines()[0]}") from None
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize" if metric.maximize else "minimize",
        load_if_exists=True,
    )
    fingerprint = json.dumps(spec.to_dict(), sort_keys=True)
    held = study.user_attrs.get("spec")
    if held is None:
        study.set_user_attr("spec", fingerprint)
        for params in tune.enqueue:
            study.enqueue_trial(space.encode(tune.space, params), skip_if_exists=True)
    elif held != fingerprint:
        key = _first_difference(json.loads(held), spec.to_dict())
        raise UserError(
            f"{out} holds a study of another spec (they differ at {key}); give the same spec (and --set) to continue it, or another --out"
        )
    study.pruner = _pruner(optuna, tune)
    return study


def _pruner(optuna, tune):
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
    )


def _sampler(optuna, tune, seed: int):
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return path or "(top level)"


def _run(optuna, study, spec: Spec, metric: Metric, out: Path, total: int, echo) -> None:
    TrialState = optuna.trial.TrialState
    tune = spec.tune
    base = space.base_dict(spec)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    mine: list[int] = []

    def objective(trial) -> float:
        # two workers may both have seen room for one more trial; the later one steps back
        # (a failed trial, not counted) so the study never runs past the total
        ahead = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        if sum(t.number < trial.number for t in ahead) >= total:
            trial.set_user_attr("surplus", f"the study had {total} trials finished or running")
            raise _Surplus
        mine.append(trial.number)
        trial.set_user_attr("worker", worker)
        params = space.suggest(trial, tune.space)
        trial_spec = space.trial_spec(base, params, source=f"{out} trial {trial.number}")
        return run_trial(trial, trial_spec, out / TRIALS_DIR / str(trial.number), metric, params)

    while True:
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: failed, queued again
        all_trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials)
        running = sum(t.state == TrialState.RUNNING for t in all_trials)
        if finished >= total:
            return
        if finished + running >= total:
            # the rest run in other workers; wait for them (or for their heartbeats to stop)
            time.sleep(tune.heartbeat_s)
            continue
        # a seed per trial: workers sharing the study do not draw the same values
        study.sampler = _sampler(optuna, tune, tune.seed + len(all_trials))
        before = len(mine)
        study.optimize(objective, n_trials=1, catch=(_Surplus,), gc_after_trial=False)
        if len(mine) > before:
            _progress(optuna, study, mine[-1], total, metric, echo)
            complete = [
                t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
            ]
            if complete and study.best_trial.number == mine[-1]:
                _best(study, out, metric, tune.space)


class _Surplus(Exception):
    """A trial started when the study already had its total finished or running."""


def _progress(optuna, study, number: int, total: int, metric: Metric, echo) -> None:
    TrialState = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    t = next(x for x in trials if x.number == number)
    done = [x for x in trials if x.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = sum(x.state == TrialState.RUNNING for x in trials)
    if t.state == TrialState.PRUNED:
        if "diverged" in t.user_attrs:
            what = "diverged"
        elif t.intermediate_values:
            what = f"pruned after epoch {max(t.intermediate_values)}"
        else:
            what = "pruned"
        values = list(t.intermediate_values.values())
        value = values[-1] if values else None
    else:
        what, value = "done", t.value
    line = f"trial {len(done)}/{total} {what} ({TRIALS_DIR}/{t.number}): value {_num(value)}"
    complete = [x for x in trials if x.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        line += f" (best {_num(best.value)}, trial {best.number})"
    left = total - len(done)
    if left > 0:
        seconds = [
            (x.datetime_complete - x.datetime_start).total_seconds()
            for x in done
            if x.datetime_complete and x.datetime_start
        ]
        if seconds:
            eta = sum(seconds) / len(seconds) * left / max(1, running + 1)  # + this worker
            line += f", ~{_duration(eta)} left"
    echo(line)


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _best(study, out: Path, metric: Metric, search: dict[str, Any]) -> TuneResult:
    """Point ``DIR/best`` at the best complete trial's run (a symlink; a copy where links fail)."""
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(
            f"no trial of the study in {out} completed (all were pruned or failed); see {out / report.TABLE}"
        ) from None
    target = out / TRIALS_DIR / str(best.number)
    link = out / BEST
    tmp = out / f".{BEST}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        _remove(tmp)
    try:
        os.symlink(Path(TRIALS_DIR) / str(best.number), tmp, target_is_directory=True)
    except OSError:
        import shutil

        shutil.copytree(target, tmp)
    if link.exists() and not link.is_symlink():
        _remove(link)  # a copy from an earlier best cannot be replaced in one rename
    os.replace(tmp, link)
    params = space.decode(search, best.params)
    rundir.write_json(
        out / BEST_JSON,
        {"number": best.number, "value": best.value, "metric": metric.name, "params": params},
    )
    return TuneResult(best.number, best.value, params, link, metric.name)


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
