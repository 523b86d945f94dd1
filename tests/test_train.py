"""End to end: train, evaluate, predict, resume after SIGKILL, missing labels, divergence."""

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet import Run, Spec
from hydranet.errors import SpecError, TrainingDiverged, UserError
from tests_helpers import ROOT


def test_train_evaluate_predict(tiny, tmp_path):
    run = hydranet.train(tiny(epochs=4), tmp_path / "run", progress=False)
    for name in (
        "spec.json",
        "preprocessor.json",
        "tasks.json",
        "model.safetensors",
        "metrics.jsonl",
        "final_metrics.json",
    ):
        assert (run.path / name).is_file(), name
    log = run.metrics_log
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert set(log[0]["train_loss"]) == {"click", "value", "kind"}
    assert log[-1]["train_loss"]["click"] < log[0]["train_loss"]["click"]
    assert log[0]["rows_per_s"] > 0 and log[0]["weights"] == {
        "click": 1.0,
        "value": 1.0,
        "kind": 1.0,
    }
    metrics = Run.load(run.path).evaluate("test")
    assert metrics["click"]["auc"] > 0.75
    assert metrics["value"]["r2"] > 0.8
    assert metrics["kind"]["accuracy"] > 0.7
    for task, ms in metrics.items():
        assert ms == pytest.approx(run.final_metrics["test"][task], rel=1e-6)

    table = pq.read_table(tiny.paths["test"])
    preds = run.predict(table)
    assert preds.column_names == ["click", "value", "kind", "kind_probs"]
    assert preds.num_rows == table.num_rows
    df_preds = run.predict(table.to_pandas())
    np.testing.assert_allclose(df_preds["click"].to_numpy(), preds.column("click").to_numpy())


def test_unknown_categories_and_missing_numbers_at_predict_time(tiny, tmp_path):
    run = hydranet.train(tiny(epochs=1), tmp_path / "run", progress=False)
    table = pa.table(
        {
            "a": [None, 1.0],
            "b": [0.0, float("nan")],
            "c": [0.0, 0.0],
            "color": ["purple", None],
            "size": [99, 1],
        }
    )
    preds = run.predict(table)
    assert np.all(np.isfinite(preds.column("click").to_numpy()))


def test_missing_feature_column_at_predict_time_is_named(tiny, tmp_path):
    run = hydranet.train(tiny(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="'color'"):
        run.predict(pa.table({"a": [1.0], "b": [1.0], "c": [1.0], "size": [1]}))


@pytest.mark.parametrize(
    "arch", ["single_task", "shared_bottom", "mmoe", "cgc", "ple", "cross_stitch"]
)
def test_every_architecture_trains_end_to_end(tiny, tmp_path, arch):
    run = hydranet.train(tiny(arch=arch, epochs=2), tmp_path / arch, progress=False)
    assert run.final_metrics["test"]["click"]["auc"] > 0.6


def test_early_stopping_restores_best_weights(tiny, tmp_path):
    path = tiny(epochs=8, extra='early_stopping = { metric = "click.auc", patience = 1 }\n')
    path.write_text(path.read_text().replace("lr = 0.01", "lr = 0.05"))
    run = hydranet.train(path, tmp_path / "es", progress=False)
    log = run.metrics_log
    best_epoch = run.final_metrics["best_epoch"]
    best = max(r["val"]["click"]["auc"] for r in log)
    assert log[best_epoch - 1]["val"]["click"]["auc"] == best
    assert run.final_metrics["validation"]["click"]["auc"] == pytest.approx(best, abs=1e-9)


def test_nan_loss_stops_with_task_and_step_and_keeps_checkpoint(tiny, tmp_path):
    path = tiny(epochs=3, checkpoint_every=2)
    table = pq.read_table(tiny.paths["train"])
    values = table.column("value").to_numpy().copy()
    values[300] = 1e38  # standardization keeps it finite; squared error overflows to inf
    pq.write_table(
        table.set_column(table.column_names.index("value"), "value", pa.array(values)),
        tiny.paths["train"],
    )
    spec = Spec.load(path)
    spec.tasks[1].standardize = False
    with pytest.raises(TrainingDiverged, match=r"task 'value' is inf at step \d+"):
        hydranet.train(spec, tmp_path / "nan", progress=False)
    assert (tmp_path / "nan" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_missing_labels_train_and_are_ignored(tiny, tmp_path):
    """30% of click labels missing: training works, loss/metrics equal the labeled-rows-only computation."""
    from conftest import make_table

    pq.write_table(make_table(600, seed=0, missing_frac=0.3), tiny.paths["train"])
    pq.write_table(make_table(200, seed=2, missing_frac=0.3), tiny.paths["test"])
    run = hydranet.train(tiny(epochs=3), tmp_path / "run", progress=False)
    assert all(np.isfinite(r["train_loss"]["click"]) for r in run.metrics_log)

    test = pq.read_table(tiny.paths["test"])
    labeled = test.filter(test.column("click").is_valid())
    assert 0.6 * test.num_rows < labeled.num_rows < 0.8 * test.num_rows
    full = run.evaluate(str(tiny.paths["test"]))
    only = run.evaluate(labeled)
    assert full["click"] == only["click"]

    # the masked loss and its gradient equal the loss on labeled rows only
    task = run.tasks[0]
    feats = run.preprocessor.transform(test)
    y, mask = task.encode(test)
    run.model.zero_grad()
    task.loss(run.model(feats)["click"], task.targets(y), torch.as_tensor(mask)).backward()
    g_masked = [p.grad.clone() for p in run.model.parameters() if p.grad is not None]
    run.model.zero_grad()
    keep = torch.as_tensor(mask)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        run.model({k: v[keep] for k, v in feats.items()})["click"].squeeze(1),
        task.targets(y)[keep],
    )
    ref.backward()
    g_ref = [p.grad.clone() for p in run.model.parameters() if p.grad is not None]
    for a, b in zip(g_masked, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_sigkill_then_resume_gives_the_same_final_metrics(tiny, tmp_path):
    """SIGKILL mid-way through the second epoch (held there, see held_trunk: a kill after a
    fixed delay raced the run on a busy machine), then --resume: the uninterrupted run's
    metrics exactly."""
    from conftest import make_table
    from held_trunk import ARCHITECTURE, hold_env, kill_when_held, train_cmd

    pq.write_table(make_table(2000, seed=0), tiny.paths["train"])  # 32 steps per epoch
    spec = tiny(arch=ARCHITECTURE, epochs=3, checkpoint_every=7, extra="threads = 1\n")
    env = hold_env(tmp_path)

    subprocess.run(train_cmd(spec, tmp_path / "whole"), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    # held before step 46: steps 43-45 are lost, the checkpoint of step 42 is resumed
    kill_when_held(train_cmd(spec, killed), tmp_path, after_steps=45)
    assert not (killed / "model.safetensors").exists(), "the run finished before it was killed"
    assert (killed / "checkpoint.safetensors").exists()
    assert len(hydranet.rundir.read_metrics(killed)) == 1  # the first epoch's line

    res = subprocess.run(
        train_cmd(spec, killed, "--resume"), env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    whole = json.loads((tmp_path / "whole" / "final_metrics.json").read_text())
    resumed = json.loads((killed / "final_metrics.json").read_text())
    assert resumed == whole

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("rows_per_s", "seconds")} for r in rs]

    assert strip(hydranet.rundir.read_metrics(killed)) == strip(
        hydranet.rundir.read_metrics(tmp_path / "whole")
    )


def test_loading_refuses_non_safetensors_weights(tiny, tmp_path):
    run = hydranet.train(tiny(epochs=1), tmp_path / "run", progress=False)
    torch.save(
        run.model.state_dict(), run.path / "model.safetensors"
    )  # a pickle under the right name
    (run.path / "manifest.json").unlink()  # which would catch it first
    with pytest.raises(UserError, match="not a valid safetensors file"):
        Run.load(run.path)


def test_package_never_unpickles():
    import re

    pattern = re.compile(r"^\s*import pickle|pickle\.load|torch\.load\((?!.*weights_only=True)")
    offenders = [
        f"{p}:{i}"
        for p in (ROOT / "src").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_early_stopping_on_the_mean_of_the_tasks_first_metrics(tiny, tmp_path):
    from hydranet.train.callbacks import watched

    metrics = {"a": {"auc": 0.8, "logloss": 0.4}, "b": {"accuracy": 0.6, "macro_f1": 0.5}}
    assert watched("mean", "auto", metrics, {}) == (pytest.approx(0.7), True)
    assert watched("mean", "min", metrics, {})[1] is False
    # tiny's tasks are click (AUC first: higher is better) and value (RMSE first: lower)
    path = tiny(epochs=1, extra='early_stopping = { metric = "mean" }\n')
    with pytest.raises(SpecError, match=r"early_stopping\.metric: 'mean' needs .*auc, rmse"):
        hydranet.train(path, tmp_path / "mean", progress=False)
