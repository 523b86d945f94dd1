"""Per-task gradients as the rows of one matrix, and writing a flat vector back into ``.grad``.

``task_jacobian`` is the one place that differentiates K losses separately. It asks autograd
for all K vector-Jacobian products in one batched pass (``is_grads_batched=True`` runs the
backward graph under vmap with the K rows of the identity as cotangents), which is one graph
traversal instead of K. Some backward formulas have no batching rule; then it falls back to K
plain ``autograd.grad`` calls, which give the same numbers.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

_batched_ok = True  # flips off after the first failure so the batched attempt is not retried


def task_jacobian(losses: list[Tensor], inputs: list[Tensor], retain_graph: bool = False) -> Tensor:
    """Return J of shape ``[K, P]``: row k is d losses[k] / d inputs, flattened and concatenated.

    Inputs a loss does not reach get zero entries (not an error).
    """
    global _batched_ok
    k = len(losses)
    grads: tuple[Tensor | None, ...] | None = None
    if _batched_ok and k > 1:
        stacked = torch.stack([loss.reshape(()) for loss in losses])
        eye = torch.eye(k, dtype=stacked.dtype, device=stacked.device)
        try:
            with warnings.catch_warnings():
                # vmap prints a performance note for ops without a batching rule; the result is right.
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                grads = torch.autograd.grad(
                    stacked, inputs, grad_outputs=eye, is_grads_batched=True,
                    retain_graph=True, allow_unused=True,
                )  # fmt: skip
        except (RuntimeError, NotImplementedError, ValueError):
            _batched_ok = False
            grads = None
    if grads is not None:
        rows = [
            g.reshape(k, -1) if g is not None else x.new_zeros(k, x.numel())
            for g, x in zip(grads, inputs, strict=True)
        ]
        return torch.cat(rows, dim=1)
    out = []
    for i, loss in enumerate(losses):
        gi = torch.autograd.grad(
            loss, inputs, retain_graph=retain_graph or i < k - 1, allow_unused=True
        )
        out.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(x)).reshape(-1)
                    for g, x in zip(gi, inputs, strict=True)
                ]
            )
        )
    return torch.stack(out)


def add_flat_grad(params: list[Tensor], flat: Tensor) -> None:
    """Accumulate ``flat`` (the concatenation of all params, flattened) into each ``p.grad``."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset : offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.add_(piece)
        offset += n
    assert offset == flat.numel(), "flat gradient does not match the parameters"
