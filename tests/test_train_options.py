"""Trainer options at small size: precision, compile, schedules, optimizers, splits, CSV, custom parts."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet import Spec
from hydranet.spec import ScheduleSpec, TrainSpec
from hydranet.train.optim import build_scheduler


def _spec(tiny, **train):
    spec = Spec.load(tiny(epochs=2))
    return spec.model_copy(update={"train": spec.train.model_copy(update=train)})


def test_bf16_autocast_trains(tiny, tmp_path):
    run = hydranet.train(_spec(tiny, precision="bf16"), tmp_path / "bf16", progress=False)
    assert run.final_metrics["test"]["click"]["auc"] > 0.6


def test_compile_traces_the_model(tiny, tmp_path, monkeypatch):
    """Dynamo traces the whole model; the eager backend keeps this fast (inductor: the slow test)."""
    real = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real(model, backend="eager", fullgraph=True)
    )
    # two threads: the eager CPU embedding path then differs from the one compile must take
    spec = _spec(tiny, compile=True, epochs=1, threads=2)
    run = hydranet.train(spec, tmp_path / "compiled", progress=False)
    assert np.isfinite(run.metrics_log[0]["train_loss"]["click"])


@pytest.mark.slow
def test_compile_with_inductor_trains(tiny, tmp_path):
    run = hydranet.train(_spec(tiny, compile=True, epochs=1), tmp_path / "compiled", progress=False)
    assert np.isfinite(run.metrics_log[0]["train_loss"]["click"])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_other_optimizers_and_grad_clip(tiny, tmp_path, optimizer):
    # plain SGD needs a larger step than Adam: the output layers start at a tenth of
    # PyTorch's init (ModelSpec.head_init_scale), so the first gradients are small
    lr = {"adamw": 0.01, "sgd": 0.1}[optimizer]
    run = hydranet.train(
        _spec(tiny, optimizer=optimizer, lr=lr, grad_clip=1.0), tmp_path / optimizer, progress=False
    )
    log = run.metrics_log
    assert log[-1]["train_loss"]["value"] < log[0]["train_loss"]["value"]


def test_warmup_then_cosine_schedule():
    cfg = TrainSpec(lr=1.0, schedule={"kind": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] > 0.1 and sched.get_last_lr()[0] == pytest.approx(0.1)


def test_lr_is_logged_per_epoch(tiny, tmp_path):
    run = hydranet.train(
        _spec(tiny, schedule=ScheduleSpec(kind="linear"), epochs=3),
        tmp_path / "lin",
        progress=False,
    )
    lrs = [r["lr"] for r in run.metrics_log]
    assert lrs[0] > lrs[1] > lrs[2]


def test_fraction_splits_and_csv_source(tiny, tmp_path):
    table = pq.read_table(tiny.paths["train"])
    csv = tmp_path / "all.csv"
    pacsv.write_csv(table, csv)
    spec = Spec.load(tiny(epochs=1))
    data = spec.data.model_copy(
        update={
            "train": str(csv),
            "validation": None,
            "test": None,
            "validation_fraction": 0.2,
            "test_fraction": 0.1,
        }
    )
    run = hydranet.train(spec.model_copy(update={"data": data}), tmp_path / "csv", progress=False)
    assert set(run.final_metrics) >= {"validation", "test"}
    assert len(run.evaluate("validation")) == 3


def test_multilabel_task_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    n = 800
    x = rng.normal(size=(n, 2))
    table = pa.table(
        {
            "x0": x[:, 0],
            "x1": x[:, 1],
            "p": (x[:, 0] > 0).astype(np.int64),
            "q": (x[:, 1] > 0).astype(np.int64),
            "r": x.sum(1),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    spec = Spec.from_dict(
        {
            "data": {
                "train": str(tmp_path / "d.parquet"),
                "numeric": ["x0", "x1"],
                "validation_fraction": 0.25,
            },
            "tasks": [
                {"name": "tags", "kind": "multilabel", "columns": ["p", "q"]},
                {"name": "r", "kind": "regression", "loss": "huber"},
            ],
            "model": {"architecture": "shared_bottom", "params": {"hidden": [16]}},
            "train": {"epochs": 5, "batch_size": 64, "lr": 0.01},
        }
    )
    run = hydranet.train(spec, tmp_path / "ml", progress=False)
    assert run.final_metrics["validation"]["tags"]["macro_auc"] > 0.9
    preds = run.predict(table.slice(0, 5))
    assert len(preds.column("tags")[0]) == 2


class DoubleMSE:
    """A user loss named by import path: per-element losses, hydranet masks and averages."""

    def __call__(self, pred, target, **_):
        return 2.0 * (pred - target) ** 2


def test_user_loss_by_import_path(tiny, tmp_path):
    spec = Spec.load(tiny(epochs=1))
    spec.tasks[1].loss = f"{__name__}:DoubleMSE"
    run = hydranet.train(spec, tmp_path / "loss", progress=False)
    assert np.isfinite(run.metrics_log[0]["train_loss"]["value"])


def test_pos_weight_auto_trains(tiny, tmp_path):
    spec = Spec.load(tiny(epochs=1))
    spec.tasks[0].pos_weight = "auto"
    run = hydranet.train(spec, tmp_path / "pw", progress=False)
    assert run.tasks[0].state["pos_weight"] > 0


@pytest.mark.parametrize(("method", "rep_grad"), [("mgda_ub", False), ("pcgrad", True)])
def test_trainer_gives_representation_methods_a_rep(tiny, tmp_path, method, rep_grad):
    import warnings

    spec = Spec.load(tiny(epochs=1))
    spec = spec.model_copy(
        update={"balance": spec.balance.model_copy(update={"method": method, "rep_grad": rep_grad})}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the no-representation fallback warns
        run = hydranet.train(spec, tmp_path / method, progress=False)
    assert np.isfinite(run.metrics_log[0]["train_loss"]["click"])


def test_cpu_training_tunes_glibc_malloc_once_and_can_be_switched_off():
    import os
    import platform
    import subprocess
    import sys

    code = "from hydranet.train import _malloc; a = _malloc.tune(); b = _malloc.tune(); print(a, b)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env = {**os.environ, "HYDRANET_MALLOC_TUNING": "0"}
    off = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert off.stdout.split() == ["False", "False"]
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on.stdout.split() == ["True", "True"]  # glibc accepted both settings


def test_pos_weight_tensor_is_made_once_per_device_and_dtype(tiny, tmp_path):
    """The loss's pos_weight tensor is kept: made per step it would be a host-to-device copy
    inside a captured CUDA graph step."""
    spec = Spec.load(tiny(epochs=1))
    spec.tasks[0].pos_weight = "auto"
    run = hydranet.train(spec, tmp_path / "pw", progress=False)
    task = run.tasks[0]
    out = torch.zeros(4, 1)
    first = task._loss_kwargs(out)["pos_weight"]
    assert first is task._loss_kwargs(out)["pos_weight"]
    assert float(first) == pytest.approx(task.state["pos_weight"])
    assert task._loss_kwargs(out.double())["pos_weight"].dtype == torch.float64
