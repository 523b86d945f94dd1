"""Reference values: each balancer against its paper's formula on small hand-made cases.

Every expected value is computed here, independently of the implementation: closed forms,
enumeration of active sets (fine for K <= 3), ternary search on a 1-D convex function, or an
SVD instead of the eigendecomposition the code uses. Gradient matrices are float64 so the
comparisons can be tight (1e-5 and better).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hydranet.balance import BALANCERS, BalanceContext

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True, scope="module")
def _float64_one_thread():
    dtype, n = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(n)


def T(rows):
    return torch.tensor(rows, dtype=torch.float64)


CASES = {
    "2_conflict": T([[1.0, 0.5, -0.2], [-0.8, 1.0, 0.3]]),
    "2_aligned": T([[1.0, 0.2, 0.1], [2.0, 0.5, 0.0]]),
    "2_unequal_norms": T([[3.0, 0.0, 0.0, 1.0], [-0.5, 0.4, 0.0, 0.0]]),
    "3_conflict": T([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [0.1, -0.8, 1.0]]),
    "3_aligned": T([[1.0, 0.1, 0.0, 0.2], [0.9, 0.3, 0.1, 0.0], [1.1, 0.0, 0.2, 0.1]]),
    "3_mixed": T([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [-1.5, 0.5, 0.4]]),
}
FULL_RANK = {k: v for k, v in CASES.items() if torch.linalg.matrix_rank(v) == v.shape[0]}


def agg(name: str, G: torch.Tensor, **params):
    b = BALANCERS.get(name)([f"t{i}" for i in range(G.shape[0])], **params)
    d = b.aggregate(G)
    return d, b._coef


def ternary(f, lo=0.0, hi=1.0, iters=200):
    for _ in range(iters):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(m1) <= f(m2):
            hi = m2
        else:
            lo = m1
    return (lo + hi) / 2


def min_norm_enumerated(G):
    """Min-norm point of conv(rows of G): try every face (support), keep the feasible best."""
    k, best = G.shape[0], None
    for r in range(1, k + 1):
        for S in itertools.combinations(range(k), r):
            Gs = G[list(S)]
            # min ||Gs^T a||^2 s.t. sum a = 1: [[2 Gs Gs^T, 1], [1^T, 0]] [a; mu] = [0; 1]
            M = torch.zeros(r + 1, r + 1)
            M[:r, :r] = 2 * Gs @ Gs.T
            M[:r, r] = M[r, :r] = 1.0
            try:
                sol = torch.linalg.solve(M, torch.cat([torch.zeros(r), torch.ones(1)]))
            except RuntimeError:
                continue
            a = sol[:r]
            if (a < -1e-12).any():
                continue
            d = a @ Gs
            if best is None or d.norm() < best.norm() - 1e-12:
                best = d
    return best


def project_on_dual_cone(x, G):
    """argmin_y ||y - x|| s.t. G y >= 0, by enumerating which constraints are active (P-space)."""
    k, best = G.shape[0], None
    for r in range(0, k + 1):
        for S in itertools.combinations(range(k), r):
            if r == 0:
                y = x.clone()
            else:
                # y = x + mu^T Gs with Gs y = 0 and multipliers mu >= 0 (KKT of the projection)
                Gs = G[list(S)]
                mu = -torch.linalg.solve(Gs @ Gs.T, Gs @ x)
                if (mu < -1e-12).any():
                    continue
                y = x + mu @ Gs
            if (G @ y < -1e-10).any():
                continue
            if best is None or (y - x).norm() < (best - x).norm() - 1e-12:
                best = y
    return best


# ----------------------------------------------------------------------------- PCGrad
def test_pcgrad_opposite_gradients_cancel():
    g = T([1.0, 2.0, -1.0])
    d, _ = agg("pcgrad", torch.stack([g, -2 * g]))
    torch.testing.assert_close(d, torch.zeros(3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("2")])
def test_pcgrad_two_tasks(case):
    g1, g2 = CASES[case]

    def proj(a, b):
        dot = a @ b
        return a - dot / (b @ b) * b if dot < 0 else a

    d, _ = agg("pcgrad", CASES[case])
    torch.testing.assert_close(d, proj(g1, g2) + proj(g2, g1), **TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("3")])
def test_pcgrad_three_tasks_is_one_of_the_orderings(case):
    G = CASES[case]

    def surgery(i, order):
        gi = G[i].clone()
        for j in order:
            if gi @ G[j] < 0:
                gi = gi - (gi @ G[j]) / (G[j] @ G[j]) * G[j]
        return gi

    others = [[j for j in range(3) if j != i] for i in range(3)]
    candidates = [
        sum(
            surgery(i, o if flip else o[::-1])
            for i, o, flip in zip(range(3), others, flips, strict=True)
        )
        for flips in itertools.product([False, True], repeat=3)
    ]
    d, coef = agg("pcgrad", G)
    assert min(float((d - c).abs().max()) for c in candidates) < 1e-10
    torch.testing.assert_close(coef @ G, d, **TOL)


# ----------------------------------------------------------------------------- MGDA
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("2")])
def test_mgda_two_tasks_min_norm_point(case):
    g1, g2 = CASES[case]
    gamma = ternary(lambda a: float((a * g1 + (1 - a) * g2).norm()))
    d, coef = agg("mgda", CASES[case])
    torch.testing.assert_close(d, gamma * g1 + (1 - gamma) * g2, **TOL)
    assert abs(float(coef.sum()) - 1) < 1e-12 and (coef >= 0).all()


@pytest.mark.parametrize("case", list(CASES))
def test_mgda_min_norm_point(case):
    d, _ = agg("mgda", CASES[case])
    torch.testing.assert_close(d, min_norm_enumerated(CASES[case]), **TOL)


def test_mgda_frank_wolfe_is_close():
    G = CASES["3_conflict"]
    d, _ = agg("mgda", G, solver="frank_wolfe", epsilon=1e-8, max_iters=10000)
    assert float(d.norm()) == pytest.approx(float(min_norm_enumerated(G).norm()), rel=1e-4)


def test_mgda_ub_is_mgda_on_rep_gradients():
    assert BALANCERS.get("mgda_ub")(["a", "b"]).rep_grad


# ----------------------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("case", list(CASES))
def test_cagrad_c0_is_mean(case):
    d, coef = agg("cagrad", CASES[case], c=0.0)
    torch.testing.assert_close(d, CASES[case].mean(0), **TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("2")])
def test_cagrad_two_tasks(case):
    G, c = CASES[case], 0.5
    g0 = G.mean(0)
    phi = c * g0.norm()

    def F(a):
        gw = a * G[0] + (1 - a) * G[1]
        return float(gw @ g0 + phi * gw.norm())

    a = ternary(F)
    gw = a * G[0] + (1 - a) * G[1]
    want = (g0 + phi / gw.norm() * gw) / (1 + c**2)
    d, _ = agg("cagrad", G, c=c)
    torch.testing.assert_close(d, want, **TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("3")])
def test_cagrad_three_tasks_optimal(case):
    """d (1 + c^2) is on the sphere ||x - g0|| = c||g0|| and maximises min_i g_i . x on it."""
    G, c = CASES[case], 0.5
    g0 = G.mean(0)
    d, _ = agg("cagrad", G, c=c)
    x = d * (1 + c**2)
    assert float((x - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-6)
    best = float((G @ x).min())
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(20000, G.shape[1], generator=gen)
    ball = g0 + c * g0.norm() * u / u.norm(dim=1, keepdim=True)
    assert float((ball @ G.T).min(1).values.max()) <= best + 1e-9


# ----------------------------------------------------------------------------- UPGrad
@pytest.mark.parametrize("case", list(CASES))
def test_upgrad_projection_definition(case):
    G = CASES[case]
    d, coef = agg("upgrad", G)
    want = sum(project_on_dual_cone(g, G) for g in G) / G.shape[0]
    torch.testing.assert_close(d, want, **TOL)
    assert (G @ d >= -1e-9).all(), "UPGrad must not conflict with any task"
    torch.testing.assert_close(coef @ G, d, **TOL)


def test_upgrad_aligned_is_mean():
    G = CASES["3_aligned"]
    assert (G @ G.T >= 0).all()
    d, _ = agg("upgrad", G)
    torch.testing.assert_close(d, G.mean(0), **TOL)


# ----------------------------------------------------------------------------- IMTL-G
@pytest.mark.parametrize("case", list(FULL_RANK))
def test_imtl_g_closed_form(case):
    G = CASES[case]
    U = G / G.norm(dim=1, keepdim=True)
    D = G[0] - G[1:]
    Ud = U[0] - U[1:]
    a_rest = (G[0] @ Ud.T) @ torch.linalg.inv(D @ Ud.T)
    a = torch.cat([1 - a_rest.sum().reshape(1), a_rest])
    d, coef = agg("imtl", G)
    torch.testing.assert_close(coef, a, **TOL)
    torch.testing.assert_close(d, a @ G, **TOL)
    proj = U @ d  # equal projections on every unit gradient
    torch.testing.assert_close(proj, proj[0].expand_as(proj), **TOL)


# ----------------------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("case", list(FULL_RANK))
def test_nash_mtl_optimality(case):
    G = CASES[case]
    d, alpha = agg("nash_mtl", G)
    assert (alpha > 0).all()
    torch.testing.assert_close((G @ G.T) @ alpha, 1 / alpha, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(d, alpha @ G, **TOL)
    assert float(d @ d) == pytest.approx(G.shape[0], rel=1e-7)  # sum_i a_i (G G^T a)_i = K


def test_nash_mtl_invariant_to_task_scale():
    G = CASES["3_conflict"]
    d1, a1 = agg("nash_mtl", G)
    d2, a2 = agg("nash_mtl", G * T([[3.0], [1.0], [0.1]]))
    torch.testing.assert_close(d1, d2, **TOL)
    torch.testing.assert_close(a2, a1 / T([3.0, 1.0, 0.1]), **TOL)


# ----------------------------------------------------------------------------- Aligned-MTL
@pytest.mark.parametrize("case", list(FULL_RANK))
def test_aligned_mtl_procrustes(case):
    G = CASES[case]
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    G_hat = S.min() * U @ Vh  # closest matrix with orthogonal rows of norm sigma_min
    d, _ = agg("aligned_mtl", G)
    torch.testing.assert_close(d, G_hat.sum(0), **TOL)


# ----------------------------------------------------------------------------- GradDrop
def test_graddrop_sign_property():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(3, 2000, generator=gen)
    G[:, :100] = G[:, :100].abs()  # agreeing coordinates are always kept whole
    d, coef = agg("graddrop", G)
    pos, neg = G.clamp_min(0).sum(0), G.clamp_max(0).sum(0)
    assert torch.all(torch.isclose(d, pos) | torch.isclose(d, neg))
    torch.testing.assert_close(d[:100], G[:, :100].sum(0))
    assert ((coef > 0) & (coef < 1)).all()
    # purity P: the positive side is kept with probability P (one-sided binomial check)
    P = 0.5 * (1 + G.sum(0) / G.abs().sum(0))
    kept_pos = torch.isclose(d, pos) & ~torch.isclose(pos, neg)
    assert abs(float(kept_pos[100:].double().mean() - P[100:].mean())) < 0.05


def test_graddrop_leak_one_is_sum():
    G = CASES["3_conflict"]
    d, _ = agg("graddrop", G, leak=1.0)
    torch.testing.assert_close(d, G.sum(0), **TOL)


# ----------------------------------------------------------------------------- loss weighting
def _backward(name, loss_values, **params):
    """One backward through losses L_t = v_t * theta (theta = 1): theta.grad = sum w_t v_t."""
    tasks = [f"t{i}" for i in range(len(loss_values))]
    b = BALANCERS.get(name)(tasks, **params)
    theta = torch.ones((), requires_grad=True)
    losses = {t: v * theta for t, v in zip(tasks, loss_values, strict=True)}
    b.backward(losses, BalanceContext(shared_params=[theta]))
    return b, theta.grad


def test_uw_formula():
    tasks = ["a", "b"]
    b = BALANCERS.get("uw")(tasks)
    with torch.no_grad():
        b.log_vars.copy_(T([0.3, -0.7]))
    b.log_vars.grad = None
    theta = torch.ones((), requires_grad=True)
    L = T([2.0, 0.5])
    b.backward({"a": L[0] * theta, "b": L[1] * theta}, BalanceContext(shared_params=[theta]))
    s = [0.3, -0.7]
    w = [0.5 * math.exp(-x) for x in s]
    assert float(theta.grad) == pytest.approx(w[0] * 2.0 + w[1] * 0.5, rel=1e-12)
    want = [-0.5 * math.exp(-x) * v + 0.5 for x, v in zip(s, [2.0, 0.5], strict=True)]
    torch.testing.assert_close(b.log_vars.grad, T(want).to(b.log_vars.grad), **TOL)
    assert b.last_weights == pytest.approx({"a": w[0], "b": w[1]}, rel=1e-6)


def test_dwa_weights_from_history():
    tasks = ["a", "b", "c"]
    b = BALANCERS.get("dwa")(tasks)
    ones = {t: 1.0 for t in tasks}
    assert b.weights({}, BalanceContext(shared_params=[])) == ones
    b.end_epoch({"a": 2.0, "b": 1.0, "c": 4.0})
    assert b.weights({}, BalanceContext(shared_params=[])) == ones  # only one epoch seen
    b.end_epoch({"a": 1.0, "b": 0.9, "c": 4.4})
    b.end_epoch({"a": 0.5, "b": 0.8, "c": 4.0})  # rates: 0.5/1.0, 0.8/0.9, 4.0/4.4
    r = [0.5, 0.8 / 0.9, 4.0 / 4.4]
    e = [math.exp(x / 2.0) for x in r]
    want = {t: 3 * x / sum(e) for t, x in zip(tasks, e, strict=True)}
    got = b.weights({}, BalanceContext(shared_params=[]))
    assert got == pytest.approx(want, rel=1e-12)
    assert sum(got.values()) == pytest.approx(3.0)


def test_gls_weights_and_gradient():
    L = [2.0, 0.5, 3.0]
    b, grad = _backward("gls", L)
    geo = (2.0 * 0.5 * 3.0) ** (1 / 3)
    assert b.last_weights == pytest.approx({f"t{i}": geo / (3 * v) for i, v in enumerate(L)})
    # gradient of (prod_t v_t theta)^(1/3) at theta = 1 is geo
    assert float(grad) == pytest.approx(geo, rel=1e-6)


def test_rlw_weights_are_softmax_of_normal_draws():
    b, _ = _backward("rlw", [1.0, 2.0, 3.0], seed=7)
    z = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    want = torch.softmax(z, 0).tolist()
    assert list(b.last_weights.values()) == pytest.approx(want, rel=1e-12)


def test_famo_weights_and_first_logit_step():
    tasks = ["a", "b", "c"]
    b = BALANCERS.get("famo")(tasks)
    ctx = BalanceContext(shared_params=[])
    L0 = {"a": T(2.0), "b": T(0.5), "c": T(1.0)}
    w = b.weights(L0, ctx)  # z uniform: w_t proportional to 1 / L_t
    inv = {t: 1 / float(v) for t, v in L0.items()}
    assert w == pytest.approx({t: x / sum(inv.values()) for t, x in inv.items()}, rel=1e-12)
    L1 = {"a": T(1.0), "b": T(0.45), "c": T(0.9)}
    b.update(L1)
    delta = torch.log(T([2.0, 0.5, 1.0])) - torch.log(T([1.0, 0.45, 0.9]))
    z = torch.full((3,), 1 / 3)
    g = z * (delta - z @ delta)  # grad of z^T delta w.r.t. the logits (plus 0 weight decay)
    step = 0.025 * g / (g.abs() + 1e-8)  # Adam's first step: lr * g / (|g| + eps)
    torch.testing.assert_close(b.logits, -step, rtol=1e-6, atol=1e-12)


def test_gradnorm_update_and_normalisation():
    torch.manual_seed(0)
    tasks = ["a", "b", "c"]
    W = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(8, 4)
    heads = torch.randn(3, 3)
    b = BALANCERS.get("gradnorm")(tasks, alpha=1.5, lr=0.1)

    def losses():
        h = torch.tanh(x @ W)
        return {t: (h @ heads[i]).pow(2).mean() for i, t in enumerate(tasks)}

    L = losses()
    norms = torch.stack([torch.autograd.grad(L[t], W, retain_graph=True)[0].norm() for t in tasks])
    b.backward(L, BalanceContext(shared_params=[W]))
    # step 1: L(0) = L so every rate is 1 and the target is the mean norm
    g = norms  # weights start at 1
    w = 1 - 0.1 * torch.sign(g - g.mean()) * norms
    w = w.clamp_min(1e-3)
    w = 3 * w / w.sum()
    torch.testing.assert_close(b.task_weights, w.to(b.task_weights), **TOL)
    for _ in range(20):
        b.backward(losses(), BalanceContext(shared_params=[W]))
        assert float(b.task_weights.sum()) == pytest.approx(3.0, rel=1e-12)
        assert (b.task_weights > 0).all()


def test_cagrad_two_task_closed_form_matches_the_general_solver():
    """K = 2 is solved in closed form; it reaches the projected-gradient solver's minimum
    (on conflicting, aligned, opposite and scaled pairs)."""
    import math

    import numpy as np

    from hydranet.balance._cagrad import _two_task_minimizer
    from hydranet.balance._simplex import minimize_on_simplex

    gen = torch.Generator().manual_seed(3)
    pairs = [torch.randn(2, 30, generator=gen, dtype=torch.float64) for _ in range(40)]
    g = torch.randn(30, generator=gen, dtype=torch.float64)
    pairs += [torch.stack([g, -0.5 * g]), torch.stack([g, 2 * g]), torch.stack([g, g + 1e-3])]
    checked = 0
    for G in pairs:
        A = (G @ G.T).numpy()
        A = A / np.diagonal(A).mean()
        b = np.full(2, 0.5)
        Ab = A @ b
        for c in (0.1, 0.5, 0.9):
            s = c * math.sqrt(float(b @ Ab))

            def f(w, A=A, Ab=Ab, s=s):
                return float(w @ Ab + s * math.sqrt(w @ A @ w + 1e-20))

            def grad(w, A=A, Ab=Ab, s=s):
                return Ab + s * (A @ w) / math.sqrt(w @ A @ w + 1e-20)

            w = _two_task_minimizer(A, Ab, s)
            assert w is not None and w.min() >= 0 and abs(w.sum() - 1) < 1e-15
            assert f(w) <= f(minimize_on_simplex(f, grad, b.copy())) + 1e-12
            checked += 1
    assert checked == 3 * len(pairs)
    # identical gradients: the dual is flat in t; the general solver takes it
    assert _two_task_minimizer(np.ones((2, 2)), np.ones(2), 0.5) is None
