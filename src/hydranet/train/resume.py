"""Resuming a run: what may change on resume, a finished run left alone, where a run stands.

:func:`resume_spec` compares the spec a resume is given with the run's own (resolved)
spec: only :data:`RESUMABLE_KEYS` may differ. A finished run (weights and final metrics)
with nothing more to train raises :class:`RunFinished` before anything is written; more
``train.epochs`` continue it from its checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydranet import rundir
from hydranet.errors import UserError
from hydranet.spec import Spec
from hydranet.train.prepare import resolve_spec
from hydranet.train.state_io import load_state

__all__ = [
    "RESUMABLE_KEYS",
    "RunFinished",
    "checkpoint_position",
    "position",
    "record_changes",
    "resume_spec",
]


# What a resume may change: none changes what the checkpoint's tensors mean or how a step
# computes. train.epochs extends a run (or ends it sooner); checkpoint_every and
# eval_batch_size change only when state is saved and how evaluation is batched; threads
# fits the run to the machine it resumes on (CPU sums may then round differently);
# shard_encoders too (the ranks it resumes on): checkpoints hold every tensor whole, and a
# restore shards what the new spec shards.
RESUMABLE_KEYS = (
    "train.epochs",
    "train.checkpoint_every",
    "train.eval_batch_size",
    "train.threads",
    "train.shard_encoders",
)


class RunFinished(UserError):
    """``--resume`` of a finished run with nothing more to train (not an error: the CLI
    prints it and exits 0)."""


def resume_spec(
    given: Spec, out: Path, source: str | None
) -> tuple[Spec, dict[str, tuple[Any, Any]]]:
    """The spec a resume of ``out`` trains with, and the resumable keys ``given`` changes
    (key: (the run's value, the new one)). Refuses any other difference, a finished run
    that cannot go on, and a run with no checkpoint; raises :class:`RunFinished` when a
    finished run has nothing more to do."""
    if not (out / rundir.SPEC).is_file():
        raise UserError(f"cannot resume: {out} is not a hydranet run directory (no {rundir.SPEC})")
    # nothing to compare a spec with, nor to resume: whatever the spec, the answer is this
    if not (out / rundir.CHECKPOINT).is_file() and not (out / rundir.WEIGHTS).is_file():
        raise UserError(
            f"cannot resume {out}: it stopped before its first checkpoint, so there is nothing to resume; "
            f"start it afresh with `hydranet train {source or 'SPEC'} --out {out}` (without --resume)"
        )
    cwd = Path.cwd()
    path = out / rundir.SPEC
    # paths relative to the current directory: what runs written before spec.json stored
    # absolute paths meant
    ours = Spec.from_dict(rundir.read_json(path), source=str(path)).absolute_paths(cwd)
    given = _recorded_sizes(given.absolute_paths(cwd), ours)
    diffs = _differences(ours.to_dict(), given.to_dict())
    if any(key not in RESUMABLE_KEYS for key, _, _ in diffs):
        # the run's spec is resolved (a bundled dataset's paths, '*' expanded): so must this be
        given = resolve_spec(given)
        diffs = _differences(ours.to_dict(), given.to_dict())
    fixed = [d for d in diffs if d[0] not in RESUMABLE_KEYS]
    where = source or "the given spec"
    if fixed:
        shown = "; ".join(
            f"{k}: {_show(a)} in the run, {_show(b)} in {where}" for k, a, b in fixed[:4]
        )
        more = f"; and {len(fixed) - 4} more" if len(fixed) > 4 else ""
        raise UserError(
            f"cannot resume {out} with a different spec: {shown}{more} "
            f"(on resume only {', '.join(RESUMABLE_KEYS)} may change; train anything else into a new --out)"
        )
    changed = {k: (a, b) for k, a, b in diffs}
    spec = given if changed else ours
    epochs = spec.train.epochs
    if (out / rundir.WEIGHTS).is_file() and (out / rundir.FINAL).is_file():
        final = rundir.read_json(out / rundir.FINAL)
        done, steps = final.get("epochs", ours.train.epochs), final.get("steps", "?")
        if epochs == ours.train.epochs or epochs == done:
            raise RunFinished(
                f"{out} is finished ({done} epochs, {steps} steps); nothing to do "
                "(--set train.epochs=N with a larger N trains it further)"
            )
        if final.get("stopped_early"):
            raise UserError(
                f"cannot resume {out}: it stopped early at epoch {done} (train.early_stopping); "
                "more train.epochs do not continue it"
            )
        if epochs < done:
            raise UserError(
                f"cannot resume {out} with train.epochs = {epochs}: it has trained {done} epochs already"
            )
    return spec, changed


def _recorded_sizes(given: Spec, ours: Spec) -> Spec:
    """``given`` with an ``"auto"`` train.batch_size / train.epochs as the run chose it at its
    start (recorded in its spec.json): a resume never decides them again."""
    keep = {k: getattr(ours.train, k) for k in ("batch_size", "epochs")}
    update = {k: v for k, v in keep.items() if getattr(given.train, k) == "auto"}
    if not update:
        return given
    return given.model_copy(update={"train": given.train.model_copy(update=update)})


def record_changes(out: Path, spec: Spec, changed: dict[str, tuple[Any, Any]]) -> None:
    """The run's spec.json says what it trains with now; a finished run being extended is
    finished no longer (its manifest, final metrics and weights go, the manifest first)."""
    print(
        "hydranet: changed on resume: "
        + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changed.items()),
        file=sys.stderr,
    )
    for name in (rundir.MANIFEST, rundir.FINAL, rundir.WEIGHTS):
        (out / name).unlink(missing_ok=True)
    rundir.write_json(out / rundir.SPEC, spec.to_dict())


def _differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, a's value, b's value)`` of every leaf where two spec dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in [*a, *(k for k in b if k not in a)]:
            out += _differences(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _differences(x, y, f"{key}[{i}]")
        return out
    return [] if a == b else [(key, a, b)]


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def position(loop: dict[str, Any], loader: dict[str, Any]) -> tuple[int, int]:
    """(epoch, step) of a training state: the step count and the 1-based epoch its last step
    belongs to (a checkpoint at an epoch's end is in that epoch, not the next)."""
    mid_epoch = loader["position"] > 0 and loader["epoch"] == loop["epoch"]
    return loop["epoch"] + 1 if mid_epoch else loop["epoch"], loop["step"]


def checkpoint_position(out: str | Path) -> tuple[int, int] | None:
    """(epoch, step) of the run's checkpoint (see :func:`position`); None when there is none
    (or it cannot be read)."""
    path = Path(out) / rundir.CHECKPOINT
    if not path.is_file():
        return None
    try:
        s = load_state(path)
        return position(s["loop"], s["loader"])
    except (UserError, KeyError):
        return None
