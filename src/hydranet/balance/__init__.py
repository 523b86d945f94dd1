"""Task balancing: loss weighting and gradient aggregation behind one interface.

Loss weighting (one backward of sum_t w_t L_t): ew, static, uw, dwa, gradnorm, rlw, famo, gls.
Gradient aggregation (per-task gradients of the shared part combined): mgda, mgda_ub, pcgrad,
cagrad, imtl, nash_mtl, upgrad, aligned_mtl, graddrop.

Trainer duties: add ``balancer.parameters()`` to the optimizer (uw learns its log-variances
there; the others have no parameters); call ``balancer.end_epoch(mean loss per task)`` once per
epoch (dwa); save ``balancer.state_dict()`` with checkpoints (all state is tensors); optionally
call ``balancer.update(losses)`` after the optimizer step with losses recomputed on the same
batch (famo, exact variant).
"""

from hydranet.balance import (  # noqa: F401  (each module registers its methods)
    _aligned_mtl,
    _cagrad,
    _dwa,
    _famo,
    _gls,
    _graddrop,
    _gradnorm,
    _imtl,
    _mgda,
    _nash_mtl,
    _pcgrad,
    _rlw,
    _upgrad,
    _uw,
)
from hydranet.balance import weighting as _weighting  # noqa: F401  (registers ew, static)
from hydranet.balance.aggregation import GradientAggregation
from hydranet.balance.base import BALANCERS, BalanceContext, Balancer, LossWeighting
from hydranet.balance.diagnostics import ConflictAccumulator, ConflictTracker, pairwise_cosine

__all__ = [
    "BALANCERS",
    "BalanceContext",
    "Balancer",
    "ConflictAccumulator",
    "ConflictTracker",
    "GradientAggregation",
    "LossWeighting",
    "pairwise_cosine",
]
