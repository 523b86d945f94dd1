"""Small solvers on K variables shared by the aggregators (float64, CPU-sized problems)."""

from __future__ import annotations

import torch
from torch import Tensor


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, Held et al. / Duchi et al.)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    ks = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / ks > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0)


def minimize_on_simplex(f, grad, w0: Tensor, max_iters: int = 1000, tol: float = 1e-12) -> Tensor:
    """Projected gradient descent with backtracking (Armijo) for a convex ``f`` on the simplex."""
    w = project_simplex(w0)
    fw = f(w)
    step = 1.0
    for _ in range(max_iters):
        g = grad(w)
        while True:
            w_new = project_simplex(w - step * g)
            f_new = f(w_new)
            if (
                f_new <= fw + g @ (w_new - w) + (w_new - w).pow(2).sum() / (2 * step)
                or step < 1e-20
            ):
                break
            step *= 0.5
        moved = float((w_new - w).abs().max())
        w, fw = w_new, f_new
        if moved < tol:
            break
        step *= 2.0
    return w


def box_qp(A: Tensor, u: Tensor, max_iters: int = 200, tol: float = 1e-12) -> Tensor:
    """argmin_v 1/2 v^T A v subject to v >= u, for a positive definite A (primal active set).

    Exact up to rounding, finite (Nocedal & Wright, Algorithm 16.3, with bound constraints only).
    Starts at v = u with every bound in the working set; frees the bound with the most negative
    multiplier (A v)_i, or walks the free coordinates to their Newton point until a bound blocks.
    """
    k = u.numel()
    v = u.clone()
    fixed = torch.ones(k, dtype=torch.bool)
    for _ in range(max_iters):
        grad = A @ v
        free = ~fixed
        p = torch.zeros_like(v)
        if free.any():
            idx = free.nonzero().flatten()
            p[idx] = torch.linalg.solve(A[idx][:, idx], -grad[idx])
        if float(p.abs().max()) <= tol * (1.0 + float(v.abs().max())):
            lam = torch.where(fixed, grad, torch.zeros_like(grad))
            j = int(torch.argmin(lam))
            if not fixed[j] or float(lam[j]) >= -tol * (1.0 + float(grad.abs().max())):
                return v
            fixed[j] = False
            continue
        alpha, block = 1.0, -1
        for i in (free & (p < 0)).nonzero().flatten().tolist():
            a = float((u[i] - v[i]) / p[i])
            if a < alpha:
                alpha, block = a, i
        v = v + alpha * p
        if block >= 0:
            v[block] = u[block]
            fixed[block] = True
    return v
