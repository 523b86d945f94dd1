"""Losses, registered by the name a task's ``loss`` uses.

A loss maps (outputs, targets) to per-element losses; hydranet applies the label mask and
averages over labeled elements. A user's loss named by import path follows the same
contract (a class is instantiated with no arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hydranet.registry import Registry

LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss")


@LOSSES.register("bce")
def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, pos_weight: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )


@LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, target: torch.Tensor, **_: Any) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("mse")
def mse_loss(pred: torch.Tensor, target: torch.Tensor, **_: Any) -> torch.Tensor:
    # the same numbers as F.mse_loss(reduction="none"), but its backward has a vmap batching
    # rule: the gradient balancers' K-batched backward would loop over the K rows otherwise
    return (pred - target).square()


@LOSSES.register("huber")
def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, *, huber_delta: float = 1.0, **_: Any
) -> torch.Tensor:
    return F.huber_loss(pred, target, delta=huber_delta, reduction="none")
