"""hydranet: multi-task learning from a laptop to a cluster — one trunk, many heads.

Python API::

    spec = hydranet.Spec.load("examples/census.toml")
    run = hydranet.train(spec, "runs/census")
    run.evaluate("test")            # {task: {metric: value}}
    hydranet.Run.load("runs/census").predict(table)
"""

from hydranet.balance import BALANCERS, Balancer
from hydranet.errors import DataError, SpecError, UserError
from hydranet.models.trunks import TRUNKS, Trunk
from hydranet.run import Run
from hydranet.spec import Spec
from hydranet.tasks import TASK_KINDS, Task
from hydranet.train.trainer import train

__version__ = "0.1.0"

__all__ = ["BALANCERS", "TASK_KINDS", "TRUNKS", "Balancer", "DataError", "Run", "Spec", "SpecError", "Task", "Trunk", "UserError", "train"]
