"""Small solvers on K variables shared by the aggregators (float64, CPU-sized problems).

They run on NumPy arrays, not tensors: each iteration is a handful of operations on K (a few
to a few dozen) numbers, where a PyTorch call costs 3-10 us of dispatch and a NumPy call about
1 us, and the loops run tens to hundreds of iterations per training step (measured on CAGrad's
dual at K = 8: about 10 ms per step with tensors, most of a training step on a small model).
Callers convert the K x K Gramian once and the weights back once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, Held et al. / Duchi et al.)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    ks = np.arange(1, v.size + 1, dtype=v.dtype)
    rho = int(np.nonzero(u - css / ks > 0)[0].max())
    theta = css[rho] / (rho + 1)
    return np.maximum(v - theta, 0.0)


def minimize_on_simplex(
    f: Callable[[np.ndarray], float],
    grad: Callable[[np.ndarray], np.ndarray],
    w0: np.ndarray,
    max_iters: int = 1000,
    tol: float = 1e-12,
) -> np.ndarray:
    """Projected gradient descent with backtracking (Armijo) for a convex ``f`` on the simplex."""
    w = project_simplex(w0)
    fw = f(w)
    step = 1.0
    for _ in range(max_iters):
        g = grad(w)
        while True:
            w_new = project_simplex(w - step * g)
            f_new = f(w_new)
            d = w_new - w
            if f_new <= fw + g @ d + (d @ d) / (2 * step) or step < 1e-20:
                break
            step *= 0.5
        moved = float(np.abs(d).max())
        w, fw = w_new, f_new
        if moved < tol:
            break
        step *= 2.0
    return w


def box_qp(A: np.ndarray, u: np.ndarray, max_iters: int = 200, tol: float = 1e-12) -> np.ndarray:
    """argmin_v 1/2 v^T A v subject to v >= u, for a positive definite A (primal active set).

    Exact up to rounding, finite (Nocedal & Wright, Algorithm 16.3, with bound constraints only).
    Starts at v = u with every bound in the working set; frees the bound with the most negative
    multiplier (A v)_i, or walks the free coordinates to their Newton point until a bound blocks.
    """
    k = u.size
    v = u.astype(np.float64, copy=True)
    fixed = np.ones(k, dtype=bool)
    for _ in range(max_iters):
        grad = A @ v
        free = ~fixed
        p = np.zeros_like(v)
        if free.any():
            idx = np.flatnonzero(free)
            p[idx] = np.linalg.solve(A[np.ix_(idx, idx)], -grad[idx])
        if np.abs(p).max() <= tol * (1.0 + np.abs(v).max()):
            lam = np.where(fixed, grad, 0.0)
            j = int(np.argmin(lam))
            if not fixed[j] or lam[j] >= -tol * (1.0 + np.abs(grad).max()):
                return v
            fixed[j] = False
            continue
        alpha, block = 1.0, -1
        for i in np.flatnonzero(free & (p < 0)):
            a = (u[i] - v[i]) / p[i]
            if a < alpha:
                alpha, block = a, int(i)
        v = v + alpha * p
        if block >= 0:
            v[block] = u[block]
            fixed[block] = True
    return v


def simplex_qp(A: np.ndarray, max_iters: int = 200, tol: float = 1e-12) -> np.ndarray:
    """argmin_a a^T A a subject to a >= 0, sum a = 1, for a positive definite A (primal active set).

    Exact up to rounding and finite, like :func:`box_qp` with the one equality constraint added:
    each step solves the KKT system of the free coordinates, [[2 A_FF, 1], [1^T, 0]].
    """
    k = A.shape[0]
    j0 = int(np.argmin(np.diagonal(A)))
    a = np.zeros(k, dtype=np.float64)
    a[j0] = 1.0
    fixed = np.ones(k, dtype=bool)
    fixed[j0] = False
    for _ in range(max_iters):
        grad = 2 * A @ a
        idx = np.flatnonzero(~fixed)
        n = idx.size
        kkt = np.zeros((n + 1, n + 1), dtype=np.float64)
        kkt[:n, :n] = 2 * A[np.ix_(idx, idx)]
        kkt[:n, n] = 1.0
        kkt[n, :n] = 1.0
        rhs = np.concatenate([-grad[idx], [0.0]])
        p = np.zeros_like(a)
        p[idx] = np.linalg.solve(kkt, rhs)[:n]
        if np.abs(p).max() <= tol:
            nu = grad[idx].mean()
            lam = np.where(fixed, grad - nu, 0.0)
            j = int(np.argmin(lam))
            if not fixed[j] or lam[j] >= -tol * (1.0 + np.abs(grad).max()):
                return a
            fixed[j] = False
            continue
        alpha, block = 1.0, -1
        for i in np.flatnonzero(~fixed & (p < 0)):
            step = -a[i] / p[i]
            if step < alpha:
                alpha, block = step, int(i)
        a = a + alpha * p
        if block >= 0:
            a[block] = 0.0
            fixed[block] = True
    return a
