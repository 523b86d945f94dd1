"""hydranet: multi-task learning from a laptop to a cluster — one trunk, many heads.

Python API::

    spec = hydranet.Spec.load("examples/census.toml")
    run = hydranet.train(spec, "runs/census")
    run.evaluate("test")            # {task: {metric: value}}
    hydranet.Run.load("runs/census").predict(table)
"""

import os

# Passive OpenMP waiting: with the default spin-waiting, two torch threads on shared cores made a
# training step 10-18x slower (benchmarks/RESULTS.md); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hydranet.balance import BALANCERS, Balancer  # noqa: E402
from hydranet.errors import DataError, SpecError, UserError  # noqa: E402
from hydranet.models.trunks import TRUNKS, Trunk  # noqa: E402
from hydranet.run import Run  # noqa: E402
from hydranet.spec import Spec  # noqa: E402
from hydranet.tasks import TASK_KINDS, Task  # noqa: E402
from hydranet.train.trainer import train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BALANCERS",
    "TASK_KINDS",
    "TRUNKS",
    "Balancer",
    "DataError",
    "Run",
    "Spec",
    "SpecError",
    "Task",
    "Trunk",
    "UserError",
    "train",
]
