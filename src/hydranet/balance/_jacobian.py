"""Per-task gradients as the rows of one matrix, and writing a flat vector back into ``.grad``.

``task_jacobian`` is the one place that differentiates K losses separately. It asks autograd
for all K vector-Jacobian products in one batched pass (``is_grads_batched=True`` runs the
backward graph under vmap with the K rows of the identity as cotangents), which is one graph
traversal instead of K. Some backward formulas have no batching rule; then it falls back to K
plain ``autograd.grad`` calls, which give the same numbers. The caller (a balancer, the
diagnostics) holds a small ``memo`` dict so that, once its graph has failed under vmap, its
later steps skip the batched attempt; the memo is per owner, so one model whose custom part has
no batching rule does not slow down every other model trained in the same process.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def task_jacobian(
    losses: list[Tensor],
    inputs: list[Tensor],
    retain_graph: bool = False,
    memo: dict[str, bool] | None = None,
) -> Tensor:
    """Return J of shape ``[K, P]``: row k is d losses[k] / d inputs, flattened and concatenated.

    Inputs a loss does not reach get zero entries (not an error). ``memo`` (the caller's own
    dict) records ``batched=False`` after the batched pass fails, so it is not tried again.
    """
    k = len(losses)
    grads: tuple[Tensor | None, ...] | None = None
    if k > 1 and (memo is None or memo.get("batched", True)):
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
            if memo is not None:
                memo["batched"] = False
            grads = None
    if grads is not None:
        rows = [
            g.reshape(k, -1) if g is not None else x.new_zeros(k, x.numel())
            for g, x in zip(grads, inputs, strict=True)
        ]
        # one input (a representation, one weight): its rows as they are, not copied by cat
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
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
