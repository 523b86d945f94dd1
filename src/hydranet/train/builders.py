"""Setup builders: everything the training loop is made of, each built from the Spec.

Data (:func:`hydranet.train.prepare.prepare`), the device, the encoders' data-fitted
state, the balancer, the forward (compiled or not) and the early-stopping check; the
optimizer and schedule are in :mod:`hydranet.train.optim`, the CUDA graph in
:mod:`hydranet.train.graph`, DDP in :mod:`hydranet.train.distributed`, the model in
:func:`hydranet.models.build.build_model`. :func:`hydranet.train.trainer.setup` puts
them together.
"""

from __future__ import annotations

from typing import Any

import torch

from hydranet.balance import BALANCERS, Balancer
from hydranet.errors import SpecError
from hydranet.models.encoders.input import fit_encoder_states, groups_to_fit
from hydranet.spec import Spec
from hydranet.tasks import Task
from hydranet.train.callbacks import mean_direction
from hydranet.train.device import device_type, select_device
from hydranet.train.prepare import Split

__all__ = [
    "build_balancer",
    "build_forward",
    "check_early_stopping",
    "device_type",
    "fit_encoders",
    "select_device",
]


def build_balancer(spec: Spec) -> Balancer:
    import inspect

    cls = BALANCERS.get(spec.balance.method)
    kwargs = dict(spec.balance.params)
    accepted = inspect.signature(cls).parameters
    if "rep_grad" in accepted:
        kwargs["rep_grad"] = spec.balance.rep_grad
    if "weights" in accepted and "weights" not in kwargs:
        kwargs["weights"] = {t.name: t.weight for t in spec.tasks}
    return cls([t.name for t in spec.tasks], **kwargs)


def fit_encoders(spec: Spec, prep, tasks: list[Task], train) -> dict[str, Any]:
    """What data-fitted encoders (quantile or tree bins) learn from the training split; a
    streamed split lends its first chunks in file order (up to ~1M rows), read only when
    some encoder learns from data."""
    from hydranet.data.loader import TensorData
    from hydranet.data.stream import StreamingSplit

    groups = prep.info()
    if not groups_to_fit(spec.model, groups):
        return {}
    if isinstance(train, StreamingSplit):
        parts, rows = [], 0
        for chunk in train.chunks(list(range(len(train.pieces)))):
            parts.append(chunk)
            rows += len(chunk)
            if rows >= 1_000_000:
                break
        data = TensorData.concat(parts)
    else:
        data = train.data
    # target-aware bins follow the first task (its labeled rows)
    first = tasks[0]
    mask = data.masks[first.name]
    y = data.targets[first.name][0]
    target = (y, first.continuous_target) if bool(mask.all()) else None
    return fit_encoder_states(spec.model, groups, data.features, target)


def build_forward(module: torch.nn.Module, compile: bool | str) -> torch.nn.Module:
    """The module the training step calls: ``torch.compile``d when ``train.compile`` says so."""
    if not compile:
        return module
    return torch.compile(module, **({} if compile is True else {"mode": compile}))


def check_early_stopping(spec: Spec, tasks: list[Task], splits: dict[str, Split]) -> None:
    es = spec.train.early_stopping
    if es is None:
        return
    if "validation" not in splits:
        raise SpecError(
            [
                (
                    "train.early_stopping",
                    "needs a validation split: give data.validation or data.validation_fraction",
                )
            ]
        )
    options = [f"{t.name}.{m}" for t in tasks for m in t.metric_names] + ["loss", "mean"]
    if es.metric == "mean":
        mean_direction([t.metric_names[0] for t in tasks])
    if es.metric not in options:
        raise SpecError(
            [
                (
                    "train.early_stopping.metric",
                    f"unknown metric {es.metric!r}; allowed: {', '.join(options)}",
                )
            ]
        )
