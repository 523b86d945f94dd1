"""The search space of ``[tune.space]``: checked against the spec, sampled, applied.

Every key is a spec key as ``--set`` takes it (``train.lr``, ``model.params.num_experts``,
``model.encoders.numeric.name``); a trial's spec is the base spec with the trial's values
set by the same machinery (:func:`hydranet.spec_keys.assign`) and validated as a whole.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hydranet.errors import SpecError, UserError
from hydranet.spec import Spec
from hydranet.spec_keys import assign
from hydranet.spec_tables import TuneRange

if TYPE_CHECKING:
    import optuna

_SCALARS = (str, int, float, bool, type(None))


def base_dict(spec: Spec) -> dict[str, Any]:
    """The spec every trial starts from: the given one without its ``[tune]`` section."""
    raw = spec.to_dict()
    raw.pop("tune", None)
    return raw


def trial_spec(base: dict[str, Any], params: dict[str, Any], source: str | None = None) -> Spec:
    """``base`` with ``params`` (space key -> value) set, validated."""
    raw = json.loads(json.dumps(base))  # a deep copy of plain JSON
    for key, value in params.items():
        assign(raw, key, value, flag="")
    return Spec.from_dict(raw, source=source)


def check(spec: Spec) -> None:
    """Every key of the space names a spec key, and every choice (every range's ends) makes a
    valid spec on its own; the enqueued trials too. One SpecError with every problem, each
    under ``tune.space.<key>``."""
    tune = spec.tune
    if tune is None:
        raise SpecError(
            [("tune", "the spec has no [tune] section: add [tune.space] with the keys to search")]
        )
    base = base_dict(spec)
    problems: list[tuple[str, str]] = []
    for key, dist in tune.space.items():
        values = [dist.low, dist.high] if isinstance(dist, TuneRange) else list(dist)
        for value in values:
            msg = _problem(base, {key: value})
            if msg:
                problems.append((f"tune.space.{key}", f"{value!r}: {msg}"))
                break
    for i, params in enumerate(tune.enqueue):
        unknown = [k for k in params if k not in tune.space]
        if unknown:
            problems.append(
                (
                    f"tune.enqueue[{i}]",
                    f"{unknown[0]!r} is not a key of [tune.space]; keys: {', '.join(tune.space)}",
                )
            )
            continue
        for key, value in params.items():
            dist = tune.space[key]
            if isinstance(dist, TuneRange) and not (
                isinstance(value, (int, float)) and dist.low <= value <= dist.high
            ):
                problems.append(
                    (f"tune.enqueue[{i}].{key}", f"{value!r} is outside [{dist.low}, {dist.high}]")
                )
            elif isinstance(dist, list) and value not in dist:
                problems.append(
                    (f"tune.enqueue[{i}].{key}", f"{value!r} is not one of the choices {dist}")
                )
        msg = _problem(base, params) if not problems else None
        if msg:
            problems.append((f"tune.enqueue[{i}]", msg))
    if problems:
        raise SpecError(problems)


def _problem(base: dict[str, Any], params: dict[str, Any]) -> str | None:
    try:
        trial_spec(base, params)
    except SpecError as e:
        return "; ".join(f"{p}: {m}" if p else m for p, m in e.problems)
    except UserError as e:
        return str(e)
    return None


def suggest(trial: optuna.Trial, space: dict[str, TuneRange | list[Any]]) -> dict[str, Any]:
    """The trial's value of every key of the space."""
    out: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, TuneRange):
            if dist.is_int:
                out[key] = trial.suggest_int(
                    key, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log
                )
            else:
                out[key] = trial.suggest_float(
                    key, float(dist.low), float(dist.high), step=dist.step, log=dist.log
                )
        elif all(isinstance(c, _SCALARS) for c in dist):
            out[key] = trial.suggest_categorical(key, dist)
        else:
            # Optuna's choices are scalars; a list or table (model.tower = [[8], [16, 16]]) is
            # offered as its JSON text
            chosen = trial.suggest_categorical(key, [_text(c) for c in dist])
            out[key] = json.loads(chosen)
    return out


def encode(space: dict[str, TuneRange | list[Any]], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as Optuna stores them (for :meth:`optuna.Study.enqueue_trial`)."""
    out = {}
    for key, value in params.items():
        dist = space[key]
        scalar = isinstance(dist, TuneRange) or all(isinstance(c, _SCALARS) for c in dist)
        out[key] = value if scalar else _text(value)
    return out


def decode(space: dict[str, TuneRange | list[Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params as spec values (JSON texts of list choices parsed back)."""
    out = {}
    for key, value in params.items():
        dist = space.get(key)
        encoded = isinstance(dist, list) and not all(isinstance(c, _SCALARS) for c in dist)
        out[key] = json.loads(value) if encoded and isinstance(value, str) else value
    return out


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
