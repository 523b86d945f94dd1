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


def simplex_qp(A: Tensor, max_iters: int = 200, tol: float = 1e-12) -> Tensor:
    """argmin_a a^T A a subject to a >= 0, sum a = 1, for a positive definite A (primal active set).

    Exact up to rounding and finite, like :func:`box_qp` with the one equality constraint added:
    each step solves the KKT system of the free coordinates, [[2 A_FF, 1], [1^T, 0]].
    """
    k = A.shape[0]
    j0 = int(torch.argmin(A.diagonal()))
    a = torch.zeros(k, dtype=A.dtype)
    a[j0] = 1.0
    fixed = torch.ones(k, dtype=torch.bool)
    fixed[j0] = False
    for _ in range(max_iters):
        grad = 2 * A @ a
        idx = (~fixed).nonzero().flatten()
        n = idx.numel()
        kkt = torch.zeros(n + 1, n + 1, dtype=A.dtype)
        kkt[:n, :n] = 2 * A[idx][:, idx]
        kkt[:n, n] = 1.0
        kkt[n, :n] = 1.0
        rhs = torch.cat([-grad[idx], torch.zeros(1, dtype=A.dtype)])
        p = torch.zeros_like(a)
        p[idx] = torch.linalg.solve(kkt, rhs)[:n]
        if float(p.abs().max()) <= tol:
            nu = float(grad[idx].mean())
            lam = torch.where(fixed, grad - nu, torch.zeros_like(grad))
            j = int(torch.argmin(lam))
            if not fixed[j] or float(lam[j]) >= -tol * (1.0 + float(grad.abs().max())):
                return a
            fixed[j] = False
            continue
        alpha, block = 1.0, -1
        for i in (~fixed & (p < 0)).nonzero().flatten().tolist():
            step = float(-a[i] / p[i])
            if step < alpha:
                alpha, block = step, i
        a = a + alpha * p
        if block >= 0:
            a[block] = 0.0
            fixed[block] = True
    return a
