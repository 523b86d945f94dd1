"""hydranet: multi-task learning from a laptop to a cluster — one trunk, many heads.

Python API::

    spec = hydranet.Spec.load("examples/census.toml")
    run = hydranet.train(spec, "runs/census")
    run.evaluate("test")            # {task: {metric: value}}
    hydranet.Run.load("runs/census").predict(table)

Importing hydranet changes nothing about the process and does not import torch: the names
below are imported on first use. So the CLI can set ``OMP_WAIT_POLICY`` before torch loads
its OpenMP runtime (see ``hydranet._process``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydranet.train as _train_package  # noqa: F401  (bound first: ``train`` below is the function)
from hydranet.errors import DataError, HydranetWarning, SpecError, UserError

if TYPE_CHECKING:
    from hydranet.balance import BALANCERS, Balancer
    from hydranet.models.trunks import TRUNKS, Trunk
    from hydranet.run import Run
    from hydranet.spec import Spec
    from hydranet.tasks import TASK_KINDS, Task

__version__ = "0.1.0"

__all__ = [
    "BALANCERS",
    "TASK_KINDS",
    "TRUNKS",
    "Balancer",
    "DataError",
    "HydranetWarning",
    "Run",
    "Spec",
    "SpecError",
    "Task",
    "Trunk",
    "UserError",
    "train",
]

_LAZY = {
    "BALANCERS": "hydranet.balance",
    "Balancer": "hydranet.balance",
    "TRUNKS": "hydranet.models.trunks",
    "Trunk": "hydranet.models.trunks",
    "Run": "hydranet.run",
    "Spec": "hydranet.spec",
    "TASK_KINDS": "hydranet.tasks",
    "Task": "hydranet.tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hydranet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def train(spec: Spec | str | Path, out: str | Path, **options: Any) -> Run:
    """Train ``spec`` (a Spec or a spec file) into the run directory ``out``; the Run.

    ``options`` are those of :func:`hydranet.train.trainer.train` (``resume``, ``diagnose``,
    ``progress``, ...). Sets ``OMP_WAIT_POLICY=PASSIVE`` first if torch is not loaded yet
    (see ``hydranet._process``; ``HYDRANET_OMP_PASSIVE=0`` turns it off).
    """
    from hydranet._process import passive_openmp

    passive_openmp()
    from hydranet.train.trainer import train as _train

    return _train(spec, out, **options)
