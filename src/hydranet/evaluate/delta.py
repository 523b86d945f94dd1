"""Δm%: the field's single number for a multi-task model against single-task baselines.

Maninis et al., CVPR 2019 (as used by Nash-MTL, Navon et al. 2022):
``Δm% = 100/N · Σ_i (-1)^{l_i} (M_i − B_i) / B_i`` over all N task metrics,
where ``l_i = 1`` when lower is better. Positive means the model beats the baseline.
"""

from __future__ import annotations

import math

from hydranet.errors import UserError
from hydranet.tasks import HIGHER_IS_BETTER


def delta_m(model: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> float:
    terms = []
    for task, metrics in model.items():
        if task not in baseline:
            raise UserError(f"baseline has no task {task!r} (its tasks: {', '.join(baseline)})")
        for name, value in metrics.items():
            base = baseline[task].get(name)
            if base is None or value is None or math.isnan(base) or math.isnan(value) or base == 0:
                continue
            sign = 1.0 if HIGHER_IS_BETTER.get(name, True) else -1.0
            terms.append(sign * (value - base) / abs(base))
    if not terms:
        raise UserError("no metric is shared by the run and its baseline; Δm% is undefined")
    return 100.0 * sum(terms) / len(terms)
