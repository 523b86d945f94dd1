"""Gradient-conflict diagnostics: cosines, per-epoch means, the trainer-facing tracker."""

from __future__ import annotations

import math

import pytest
import torch

from hydranet.balance import BALANCERS, BalanceContext
from hydranet.balance.diagnostics import (
    ConflictAccumulator,
    ConflictTracker,
    has_conflict,
    pairwise_cosine,
)


def test_pairwise_cosine_and_conflict():
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    cos = pairwise_cosine(G)
    r = 1 / math.sqrt(2)
    want = torch.tensor([[1.0, r, -1.0], [r, 1.0, -r], [-1.0, -r, 1.0]])
    torch.testing.assert_close(cos, want)
    assert has_conflict(cos)
    assert not has_conflict(pairwise_cosine(G[:2]))
    assert pairwise_cosine(torch.zeros(2, 3)).abs().sum() == 0  # zero rows: no NaN


def test_accumulator_epoch_means():
    acc = ConflictAccumulator(["a", "b", "c"])
    acc.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))  # a~b 0, a~c -1, b~c 0
    acc.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), names=["a", "b"])  # a~b 1; c absent
    out = acc.epoch_means()
    assert out == pytest.approx(
        {"cos/a~b": 0.5, "cos/a~c": -1.0, "cos/b~c": 0.0, "conflict_frac": 0.5}
    )
    assert acc.compute() == {"conflict_frac": 0.0}  # reset after epoch_means


def test_tracker_observes_then_balancer_backward_still_works():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(3, 4)
    heads = torch.nn.ModuleList([torch.nn.Linear(4, 1) for _ in range(2)])
    x = torch.randn(16, 3)
    rep = torch.tanh(trunk(x))
    losses = {"a": heads[0](rep).pow(2).mean(), "b": (heads[1](rep) - 1).pow(2).mean()}
    shared = list(trunk.parameters())

    def flat_grad(loss):
        return torch.cat(
            [g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]
        )

    ga, gb = flat_grad(losses["a"]), flat_grad(losses["b"])
    tracker = ConflictTracker(["a", "b"])
    tracker.observe(losses, shared, {"a": True, "b": True})
    tracker.observe(losses, shared, {"a": True, "b": False})  # one task: skipped
    ctx = BalanceContext(shared_params=shared, task_params=list(heads.parameters()))
    BALANCERS.get("ew")(["a", "b"]).backward(losses, ctx)  # the graph survived observe()
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in shared]), ga + gb)
    summary = tracker.epoch_summary()
    assert summary["cos/a~b"] == pytest.approx(float(ga @ gb / (ga.norm() * gb.norm())), rel=1e-5)
    assert summary["conflict_frac"] == float(ga @ gb < 0)


def test_gradient_balancer_feeds_its_own_accumulator():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    losses = {
        "a": (w * torch.tensor([1.0, 0.0, 0.0])).sum(),
        "b": (w * torch.tensor([-1.0, 1.0, 0.0])).sum(),
    }
    bal = BALANCERS.get("upgrad")(["a", "b"])
    bal.diagnostics = ConflictAccumulator(["a", "b"])
    bal.backward(losses, BalanceContext(shared_params=[w]))
    out = bal.diagnostics.epoch_means()
    assert out["cos/a~b"] == pytest.approx(-1 / math.sqrt(2))
    assert out["conflict_frac"] == 1.0


def test_accumulator_state_round_trip():
    acc = ConflictAccumulator(["a", "b"])
    acc.update(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    again = ConflictAccumulator(["a", "b"])
    again.load_state_dict(acc.state_dict())
    acc.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    again.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert again.compute() == acc.compute()
    with pytest.raises(ValueError, match="tasks"):
        ConflictAccumulator(["a", "c"]).load_state_dict(acc.state_dict())


def test_diagnostics_survive_a_mid_epoch_resume(tiny, tmp_path):
    """A run stopped mid-epoch and resumed logs the same epoch diagnostics as an unbroken one."""
    from hydranet import rundir
    from hydranet.spec import Spec
    from hydranet.train.trainer import setup

    spec = Spec.load(tiny(epochs=2, checkpoint_every=3))
    whole = setup(spec, tmp_path / "whole", diagnose=True, progress=False)
    whole.fit()
    part = setup(spec, tmp_path / "part", diagnose=True, progress=False)
    part.fit(stop_after_steps=7)  # mid first epoch (10 steps); the checkpoint is at step 6
    resumed = setup(spec, tmp_path / "part", resume=True, diagnose=True, progress=False)
    resumed.fit()
    a = [r["diagnostics"] for r in rundir.read_metrics(tmp_path / "whole")]
    b = [r["diagnostics"] for r in rundir.read_metrics(tmp_path / "part")]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y)
