"""Task balancing: loss weighting and gradient aggregation behind one interface."""

from hydranet.balance import weighting as _weighting  # noqa: F401  (registers ew, static)
from hydranet.balance.base import BALANCERS, BalanceContext, Balancer, LossWeighting

__all__ = ["BALANCERS", "BalanceContext", "Balancer", "LossWeighting"]
