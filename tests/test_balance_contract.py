"""Contract tests generated from the balancer registry: every method, the same checks.

A tiny shared trunk with 2 or 3 regression heads; each registered balancer must train it
(finite gradients everywhere, finite weights, the loss does not blow up), survive a task with
no labels in the batch, run with ``rep_grad=True`` where it takes that argument, and
round-trip its state exactly through ``state_dict``. Its declared capabilities (graph-safe,
uses the representation, the reduce hooks) and parameter constraints must match what it does.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from hydranet.balance import BALANCERS, BalanceContext, GradientAggregation, LossWeighting
from hydranet.balance._jacobian import task_jacobian

NAMES = BALANCERS.names()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyMTL(nn.Module):
    def __init__(self, tasks: list[str], d_in: int = 5, hidden: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})

    def forward(self, x):
        rep = self.trunk(x)
        return rep, {t: h(rep).squeeze(-1) for t, h in self.heads.items()}


def make_data(tasks: list[str], n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    ys = {}
    for i, t in enumerate(tasks):
        w = torch.randn(5, generator=g)
        # task 1 is anti-correlated with task 0 so gradients conflict sometimes
        ys[t] = (x @ w) * (-1.0 if i == 1 else 1.0) + 0.5 * torch.sin(3 * x[:, i % 5])
    return x, ys


def build(name: str, tasks: list[str], rep_grad: bool = False, **params):
    cls = BALANCERS.get(name)
    sig = inspect.signature(cls).parameters
    if "rep_grad" in sig:
        params["rep_grad"] = rep_grad
    if "weights" in sig:
        params["weights"] = {t: 1.0 + 0.5 * i for i, t in enumerate(tasks)}
    return cls(tasks, **params)


def step(model, balancer, x, ys, present=None, nan_absent=False, scale=1.0):
    rep, out = model(x)
    present = present or {t: True for t in ys}
    losses = {}
    for t in ys:
        if present[t]:
            losses[t] = (out[t] - ys[t]).pow(2).mean()
        else:  # a masked mean over zero labeled rows
            losses[t] = (out[t][:0] - ys[t][:0]).pow(2).mean() if nan_absent else (out[t] * 0).sum()
    ctx = BalanceContext(
        shared_params=list(model.trunk.parameters()),
        task_params=list(model.heads.parameters()),
        rep=rep,
        present=present,
        scale=scale,
    )
    balancer.backward(losses, ctx)
    return {t: float(v.detach()) for t, v in losses.items()}


def run(name, tasks, steps=30, rep_grad=False, seed=0, balancer=None, model=None, lr=0.05):
    torch.manual_seed(seed)
    model = model or TinyMTL(tasks)
    balancer = balancer or build(name, tasks, rep_grad=rep_grad)
    opt = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=lr)
    x, ys = make_data(tasks, seed=seed)
    history = []
    for s in range(steps):
        opt.zero_grad()
        history.append(step(model, balancer, x, ys))
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (
                f"{name}: bad grad at step {s}"
            )
        assert set(balancer.last_weights) == set(tasks)
        assert all(math.isfinite(w) for w in balancer.last_weights.values()), balancer.last_weights
        opt.step()
        if s % 10 == 9:
            balancer.end_epoch({t: history[-1][t] for t in tasks})
    return model, balancer, history


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_trains(name, k):
    tasks = [f"t{i}" for i in range(k)]
    _, _, hist = run(name, tasks)
    first, last = sum(hist[0].values()), sum(hist[-1].values())
    assert math.isfinite(last)
    assert last < 1.5 * first, f"{name}: loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    tasks = ["a", "b", "c"]
    model, bal, _ = run(name, tasks, steps=12)
    state = bal.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "state must be tensors only"
    fresh = build(name, tasks)
    fresh.load_state_dict(state)
    for key, val in fresh.state_dict().items():
        torch.testing.assert_close(val, state[key], rtol=0, atol=0, equal_nan=True, msg=key)
    twin = TinyMTL(tasks)
    twin.load_state_dict(model.state_dict())
    x, ys = make_data(tasks, seed=3)
    for m, b in ((model, bal), (twin, fresh)):
        m.zero_grad()
        step(m, b, x, ys)
        step(m, b, x, ys)  # two steps: stochastic methods draw again, FAMO updates its logits
    assert bal.last_weights == fresh.last_weights
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("name", NAMES)
def test_absent_task(name):
    tasks = ["a", "b", "c"]
    model, bal, _ = run(name, tasks, steps=3)
    x, ys = make_data(tasks)
    model.zero_grad()
    step(model, bal, x, ys, present={"a": True, "b": False, "c": True}, nan_absent=True)
    for n, p in model.named_parameters():
        if n.startswith("heads.b."):
            assert p.grad is None or torch.all(p.grad == 0), n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert all(math.isfinite(w) for w in bal.last_weights.values())
    if isinstance(bal, GradientAggregation):
        assert bal.last_weights["b"] == 0.0
    model.zero_grad()  # only one task left
    step(model, bal, x, ys, present={"a": False, "b": True, "c": False}, nan_absent=True)
    assert all(torch.isfinite(p.grad).all() for p in model.trunk.parameters())


REP_NAMES = [n for n in NAMES if "rep_grad" in inspect.signature(BALANCERS.get(n)).parameters]


@pytest.mark.parametrize("name", REP_NAMES)
def test_rep_grad(name):
    _, bal, hist = run(name, ["a", "b", "c"], steps=15, rep_grad=True)
    assert math.isfinite(sum(hist[-1].values()))


def test_every_gradient_method_takes_rep_grad():
    for name in NAMES:
        cls = BALANCERS.get(name)
        if issubclass(cls, GradientAggregation) and name != "mgda_ub":
            assert name in REP_NAMES, name


class _Sum(GradientAggregation):
    def aggregate(self, G):
        self._coef = torch.ones(G.shape[0])
        return G.sum(0)


def _plain_backward(tasks: list[str]):
    """A seeded TinyMTL, its data, and the gradients of the plain summed loss (then zeroed)."""
    torch.manual_seed(0)
    model = TinyMTL(tasks)
    x, ys = make_data(tasks)
    _, out = model(x)
    sum((out[t] - ys[t]).pow(2).mean() for t in tasks).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return model, x, ys, want


@pytest.mark.parametrize("rep_grad", [False, True])
def test_aggregation_paths_match_plain_backward(rep_grad):
    """Summing the rows must reproduce loss.backward() exactly, on either path."""
    tasks = ["a", "b", "c"]
    model, x, ys, want = _plain_backward(tasks)
    step(model, _Sum(tasks, rep_grad=rep_grad), x, ys)
    for w, p in zip(want, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)


def test_batched_jacobian_matches_loop():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)
    h = torch.tanh(torch.randn(6, 4) @ w + b)
    losses = [h.pow(2).mean(), h[:, 0].sum(), (h * 3).exp().mean()]
    J = task_jacobian(losses, [w, b, unused], retain_graph=True)
    rows = []
    for loss in losses:
        gw, gb = torch.autograd.grad(loss, [w, b], retain_graph=True)
        rows.append(torch.cat([gw.flatten(), gb, torch.zeros(2)]))
    torch.testing.assert_close(J, torch.stack(rows))


class _NumpySquare(torch.autograd.Function):
    """x * x with a backward through NumPy: it has no vmap batching rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.from_numpy((2 * x * g).detach().numpy().copy())


def test_jacobian_falls_back_per_owner_when_a_graph_cannot_be_batched():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    h = _NumpySquare.apply(w)
    memo_a: dict[str, bool] = {}
    J = task_jacobian([h.sum(), 3 * h[0]], [w], retain_graph=True, memo=memo_a)
    w0 = w.detach()
    want = torch.stack([2 * w0, torch.tensor([6 * w0[0], 0.0, 0.0])])
    torch.testing.assert_close(J, want)
    assert memo_a == {"batched": False}  # this owner's later steps skip the batched attempt
    J = task_jacobian([h.sum(), 3 * h[0]], [w], retain_graph=True, memo=memo_a)
    torch.testing.assert_close(J, want)
    # another owner (another model in the same process) still takes the batched pass
    memo_b: dict[str, bool] = {}
    v = torch.randn(3, requires_grad=True)
    J = task_jacobian([(v * v).sum(), 3 * v[0]], [v], memo=memo_b)
    assert memo_b == {}
    torch.testing.assert_close(J, torch.stack([2 * v.detach(), torch.tensor([3.0, 0.0, 0.0])]))


@pytest.mark.parametrize("name", ["mgda", "nash_mtl", "cagrad", "upgrad"])
def test_loss_scale_is_undone_before_aggregating(name):
    tasks = ["a", "b"]
    x, ys = make_data(tasks)
    grads = []
    for scale in (1.0, 1024.0):
        torch.manual_seed(0)
        model = TinyMTL(tasks)
        step(model, build(name, tasks), x, ys, scale=scale)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]) / scale)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_overflow_reaches_grad_scaler():
    tasks = ["a", "b"]
    torch.manual_seed(0)
    model = TinyMTL(tasks)
    x, ys = make_data(tasks)
    ys["a"] = ys["a"] * float("inf")
    step(model, build("mgda", tasks), x, ys)
    assert not all(torch.isfinite(p.grad).all() for p in model.trunk.parameters())


def test_nash_mtl_reuses_weights_between_solves():
    tasks = ["a", "b", "c"]
    torch.manual_seed(0)
    model = TinyMTL(tasks)
    x, ys = make_data(tasks)
    bal = build("nash_mtl", tasks, update_weights_every=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for _ in range(4):
        opt.zero_grad()
        step(model, bal, x, ys)
        opt.step()
        seen.append(dict(bal.last_weights))
    assert (
        seen[0] == seen[1] == seen[2]
    )  # solved at step 0, reused at 1 and 2 though the model moved
    assert seen[3] != seen[0]  # solved again at step 3


def test_mgda_ub_without_rep_warns_and_uses_parameters():
    tasks = ["a", "b"]
    torch.manual_seed(0)
    model = TinyMTL(tasks)
    x, ys = make_data(tasks)
    _, out = model(x)
    losses = {t: (out[t] - ys[t]).pow(2).mean() for t in tasks}
    ctx = BalanceContext(shared_params=list(model.trunk.parameters()), rep=None)
    with pytest.warns(UserWarning, match="rep_grad=True"):
        build("mgda_ub", tasks).backward(losses, ctx)
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_famo_automatic_update_equals_explicit_update():
    tasks = ["a", "b"]
    ctx = BalanceContext(shared_params=[])
    L0 = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    L1 = {"a": torch.tensor(1.5), "b": torch.tensor(0.49)}
    auto, explicit = build("famo", tasks), build("famo", tasks)
    auto.weights(L0, ctx)
    auto.weights(L1, ctx)  # updates the logits from L0 -> L1 first
    explicit.weights(L0, ctx)
    explicit.update(L1)
    explicit.weights(L1, ctx)
    torch.testing.assert_close(auto.logits, explicit.logits)
    assert not torch.equal(auto.logits, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["uw", "gls", "famo", "gradnorm"])
def test_zero_loss_reads_as_absent(name):
    """The trainer's masked loss is exactly 0 on a batch without labels for a task, and for
    loss-weighting methods it may pass no ``present`` map at all."""
    tasks = ["a", "b", "c"]
    model, bal, _ = run(name, tasks, steps=3)
    before = {k: v.clone() for k, v in bal.state_dict().items()}
    x, ys = make_data(tasks)
    model.zero_grad()
    for p in bal.parameters():
        p.grad = None
    rep, out = model(x)
    losses = {t: (out[t] - ys[t]).pow(2).mean() for t in tasks}
    losses["b"] = (out["b"] * 0).sum()
    ctx = BalanceContext(
        shared_params=list(model.trunk.parameters()), task_params=list(model.heads.parameters())
    )
    bal.backward(losses, ctx)
    assert all(torch.isfinite(p.grad).all() for p in model.trunk.parameters())
    assert all(math.isfinite(w) for w in bal.last_weights.values())
    if name == "uw":
        assert bal.log_vars.grad[1] == 0 and bal.log_vars.grad[0] != 0
    if name in ("gls", "famo"):
        assert bal.last_weights["b"] == 0.0 and bal.last_weights["a"] > 0
    if name == "gradnorm":
        assert torch.equal(bal.initial_losses, before["initial_losses"])


def test_finite_check_is_exact_when_the_sum_overflows():
    """A fast path checks G's sum; finite entries whose sum overflows are still finite."""

    class Mean(GradientAggregation):
        def aggregate(self, G):
            self._coef = torch.full((G.shape[0],), 1.0 / G.shape[0])
            return G.mean(0)

    agg = Mean(["a", "b"])
    big = torch.full((2, 4), 3e38)  # float32: each entry finite, their sum inf
    assert not torch.isfinite(big.sum())
    agg._aggregate_unscaled(big, 1.0)
    assert agg._finite and agg._coef.tolist() == [0.5, 0.5]
    for bad in (float("nan"), float("inf"), -float("inf")):
        G = torch.ones(2, 4)
        G[1, 2] = bad
        d = agg._aggregate_unscaled(G, 1.0)
        assert not agg._finite and not torch.isfinite(d).all()


# ---------------------------------------------------------------- declared capabilities
# What the trainer, train/graph.py and train/distributed.py rely on is declared on the class
# (see Balancer's docstring); these check every registered method's declarations against
# what it does.

BUILT_ARGS = {"self", "tasks", "rep_grad", "weights"}  # filled by the trainer, not by a Spec


def _always_rep(name: str) -> bool:
    """A method defined on the representation (mgda_ub): it takes no rep_grad switch."""
    cls = BALANCERS.get(name)
    return cls.aggregates_gradients and name not in REP_NAMES


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_are_consistent(name):
    cls = BALANCERS.get(name)
    assert cls.family in ("weighting", "gradient")
    assert cls.aggregates_gradients == (cls.family == "gradient")
    assert cls.aggregates_gradients == issubclass(cls, GradientAggregation)
    if cls.graph_safe:  # graph.py captures backward once: one backward of fixed weights
        assert issubclass(cls, LossWeighting) and not cls.aggregates_gradients
    tasks = ["a", "b", "c"]
    plain = build(name, tasks, rep_grad=False)
    assert plain.uses_representation == _always_rep(name)
    if name in REP_NAMES:
        assert build(name, tasks, rep_grad=True).uses_representation
    if cls.graph_safe:
        assert not build(name, tasks, rep_grad=True).uses_representation
    for rep_grad in (False, True):
        bal = build(name, tasks, rep_grad=rep_grad)
        run(name, tasks, steps=2, balancer=bal)
        # the shared gradient came from one backpropagated representation gradient exactly
        # when the balancer aggregates and works on the representation (trainer sums it)
        assert bal.used_representation == (cls.aggregates_gradients and bal.uses_representation)


class _NoHostRead(torch.Tensor):
    """A loss whose value must not reach the host (as inside a captured CUDA graph)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            raise AssertionError(f"read on the host: {func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


_HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
}


def _graph_step(bal, model, x, ys, scale: float):
    rep, out = model(x)
    losses = {t: (scale * (out[t] - ys[t]).pow(2).mean()).as_subclass(_NoHostRead) for t in ys}
    ctx = BalanceContext(
        shared_params=list(model.trunk.parameters()),
        task_params=list(model.heads.parameters()),
        rep=rep,
        present=dict.fromkeys(ys, True),  # as the trainer passes it when the step is a graph
    )
    model.zero_grad()
    bal.backward(losses, ctx)
    return bal.weights(losses, ctx)


@pytest.mark.parametrize("name", [n for n in NAMES if BALANCERS.get(n).graph_safe])
def test_graph_safe_balancers_read_nothing_on_the_host_and_keep_their_weights(name):
    tasks = ["a", "b", "c"]
    torch.manual_seed(0)
    model, bal = TinyMTL(tasks), build(name, tasks)
    x, ys = make_data(tasks)
    first = _graph_step(bal, model, x, ys, scale=1.0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    bal.end_epoch({t: 0.5 for t in tasks})
    # a replayed graph applies the captured weights: they must not depend on the losses,
    # the step or the epoch
    assert _graph_step(bal, model, x, ys, scale=3.0) == first


def test_the_host_read_check_catches_a_host_read():
    """uw reads each loss on the host (is it exactly 0?), so it is not graph-safe."""
    assert not BALANCERS.get("uw").graph_safe
    tasks = ["a", "b"]
    x, ys = make_data(tasks)
    with pytest.raises(AssertionError, match="read on the host"):
        _graph_step(build("uw", tasks), TinyMTL(tasks), x, ys, scale=1.0)


def _counting_hooks():
    calls = {"reduce": 0, "gather": 0}

    def reducer(J):
        calls["reduce"] += 1
        return J

    def gatherer(J):
        calls["gather"] += 1
        return J, 0

    return calls, reducer, gatherer


@pytest.mark.parametrize("name", NAMES)
def test_balancer_applies_the_reduce_hooks_itself(name):
    """Under DDP the trainer only sets the hooks; the balancer must call them once per step
    where it takes the per-task gradient matrix (identity hooks change nothing)."""
    tasks = ["a", "b", "c"]
    x, ys = make_data(tasks)
    for rep_grad in (False, True) if name in REP_NAMES else (False,):
        grads = []
        calls, reducer, gatherer = _counting_hooks()
        for hooked in (False, True):
            torch.manual_seed(0)
            model, bal = TinyMTL(tasks), build(name, tasks, rep_grad=rep_grad)
            if hooked:
                bal.task_gradient_reducer, bal.task_gradient_gatherer = reducer, gatherer
            step(model, bal, x, ys)
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)
        per_task = bal.aggregates_gradients or name == "gradnorm"
        on_rep = bal.uses_representation
        assert calls["reduce"] == (1 if per_task and not on_rep else 0), calls
        assert calls["gather"] == (1 if bal.aggregates_gradients and on_rep else 0), calls


def test_gathered_representation_columns_keep_this_process_slice():
    """The gatherer puts another process's columns first; the direction of this process's
    own columns is its slice of the aggregate (here a plain sum: the plain gradient)."""
    tasks = ["a", "b", "c"]
    model, x, ys, want = _plain_backward(tasks)
    agg = _Sum(tasks, rep_grad=True)
    other = torch.randn(3, 40)
    agg.task_gradient_gatherer = lambda J: (torch.cat([other, J], dim=1), other.shape[1])
    step(model, agg, x, ys)
    for w, p in zip(want, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)
    assert agg.used_representation


@pytest.mark.parametrize("name", NAMES)
def test_declared_parameters_match_the_constructor(name):
    """Every parameter a Spec may set has declared constraints, and its default meets them."""
    from hydranet.params import check_values

    cls = BALANCERS.get(name)
    sig = inspect.signature(cls).parameters
    settable = {n: p for n, p in sig.items() if n not in BUILT_ARGS}
    assert set(cls.param_constraints) == set(settable), name
    defaults = {n: p.default for n, p in settable.items()}
    assert check_values(cls.param_constraints, defaults, "balance.params") == []
