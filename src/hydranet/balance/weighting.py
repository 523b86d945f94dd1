"""Fixed loss weighting: ``ew`` (equal weights) and ``static`` (the Spec's task weights)."""

from __future__ import annotations

from hydranet.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("ew")
class EqualWeighting(LossWeighting):
    """L = sum_t L_t: every task counts the same."""

    graph_safe = True  # constant weights, nothing read on the host
    shows_weights = False  # always 1

    def __init__(self, tasks: list[str]):
        super().__init__(tasks)

    def weights(self, losses, ctx):
        return {t: 1.0 for t in self.tasks}


@BALANCERS.register("static")
class StaticWeighting(LossWeighting):
    """L = sum_t w_t L_t with the per-task ``weight`` from the Spec (or ``params.weights``)."""

    graph_safe = True  # constant weights, nothing read on the host

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None):
        super().__init__(tasks)
        self.static = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}

    def weights(self, losses, ctx):
        return self.static
