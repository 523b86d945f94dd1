"""Two gloo ranks on CPU against one process with the same global batch.

Sources of difference from the single-process run: the global loss is rebuilt from
per-rank sums (float32 mean x count, summed in float64), and gradients are averaged
across ranks (a different summation order than one backward over the whole batch);
both are float rounding, ~1e-7 relative per step. The ranks themselves must agree
bit for bit (all-reduce results are identical on every rank).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

import hydranet
from hydranet import Spec, rundir
from hydranet.train.state_io import load_tensors
from hydranet.train.trainer import setup

STEPS = 12  # 600 rows / 63 per batch = 10 batches per epoch: crosses an epoch boundary
# reducer, balancer parameters, averaged G, averaged norm gradients, gathered representation
# gradients
METHODS = ["ew", "uw", "mgda", "gradnorm", "mgda_ub", "pcgrad+rep"]


def _spec(path: Path, method: str, **train) -> Spec:
    """``method``, or ``method+rep`` for the method with ``rep_grad = true``."""
    spec = Spec.load(path)
    method, _, rep = method.partition("+")
    spec.balance.method = method
    spec.balance.rep_grad = rep == "rep"
    spec.train.batch_size = 63  # uneven slices (32 + 31) and a short last batch
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


def _params(trainer) -> dict[str, torch.Tensor]:
    """The model's parameters and the balancer's state (gradnorm's weights: a rank that
    computed them from its own shard would still hold the same parameters, DDP averaging
    the weighted gradients, but not the same weights)."""
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for k, v in trainer.balancer.state_dict().items():
        if isinstance(v, torch.Tensor):
            state[f"balancer.{k}"] = v.detach().clone()
    return state


def _worker(rank: int, world: int, port: int, spec_path: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        # the store is the test process's (see _store), every rank a client of it
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    out = Path(out)
    for method in METHODS:
        trainer = setup(_spec(Path(spec_path), method), out / method, progress=False)
        trainer.fit(stop_after_steps=STEPS)
        save_file(_params(trainer), str(out / method / f"rank{rank}.safetensors"))
    # resume under DDP: checkpoint at step 7 (rank 0 writes), every rank restores it
    trainer = setup(
        _spec(Path(spec_path), "ew", checkpoint_every=7), out / "resumed", progress=False
    )
    trainer.fit(stop_after_steps=7)
    # the spec it was trained with: a resume refuses another (batch_size 63 is not the file's)
    trainer = setup(
        _spec(Path(spec_path), "ew", checkpoint_every=7),
        out / "resumed",
        resume=True,
        progress=False,
    )
    trainer.fit()
    trainer.dist.barrier()
    trainer = setup(_spec(Path(spec_path), "ew", checkpoint_every=7), out / "whole", progress=False)
    trainer.fit()
    trainer.dist.barrier()
    torch.distributed.destroy_process_group()


def _store() -> torch.distributed.TCPStore:
    """The process group's rendezvous store, served from this process on a port the system
    chose (as torchrun's agent serves it). A port found free, closed and handed to rank 0
    could be taken by another process (another test run) before rank 0 bound it again."""
    return torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


@pytest.fixture
def missing_labels(tiny):
    """The tiny data with 30% of click labels missing (per-rank label counts differ)."""
    from conftest import make_table

    pq.write_table(make_table(600, seed=0, missing_frac=0.3), tiny.paths["train"])
    return tiny


def test_two_ranks_hold_identical_parameters_equal_to_one_process(missing_labels, tmp_path):
    spec_path = missing_labels(arch="mmoe", epochs=2)
    out = tmp_path / "ddp"
    store = _store()
    mp.spawn(_worker, args=(2, store.port, str(spec_path), str(out)), nprocs=2, join=True)
    del store

    for method in METHODS:
        r0, _ = load_tensors(out / method / "rank0.safetensors")
        r1, _ = load_tensors(out / method / "rank1.safetensors")
        for k in r0:
            assert torch.equal(r0[k], r1[k]), f"{method}: ranks differ in {k}"
        single = setup(_spec(spec_path, method), tmp_path / f"single-{method}", progress=False)
        single.fit(stop_after_steps=STEPS)
        for k, v in _params(single).items():
            torch.testing.assert_close(
                r0[k],
                v,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, k=k, method=method: f"{method} {k}: {m}",
            )

    # a DDP run resumed from a mid-epoch checkpoint ends exactly where the uninterrupted one does
    whole = json.loads((out / "whole" / rundir.FINAL).read_text())
    resumed = json.loads((out / "resumed" / rundir.FINAL).read_text())
    assert resumed == whole
    assert [r["epoch"] for r in rundir.read_metrics(out / "resumed")] == [1, 2]


def test_torchrun_launch_matches_one_process(missing_labels, tmp_path):
    """`hydranet train --nproc 2` (torchrun, gloo): whole-split metrics as one process's."""
    spec_path = missing_labels(
        arch="mmoe", epochs=2, extra='early_stopping = { metric = "click.auc", patience = 1 }\n'
    )
    spec_path.write_text(spec_path.read_text().replace("batch_size = 64", "batch_size = 63"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hydranet", "train", str(spec_path), "--no-progress"]
    res = subprocess.run(
        [*cmd, "--out", str(tmp_path / "ddp"), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test metrics") == 1  # rank 0 alone prints
    hydranet.train(spec_path, tmp_path / "one", progress=False)

    ddp = json.loads((tmp_path / "ddp" / rundir.FINAL).read_text())
    one = json.loads((tmp_path / "one" / rundir.FINAL).read_text())
    assert {k: ddp[k] for k in ("epochs", "steps", "best_epoch", "stopped_early")} == {
        k: one[k] for k in ("epochs", "steps", "best_epoch", "stopped_early")
    }
    for split in ("validation", "test"):
        for task, metrics in one[split].items():
            for name, value in metrics.items():
                tol = 1e-5 if name == "auc" else 1e-5 * max(1.0, abs(value))
                assert ddp[split][task][name] == pytest.approx(value, abs=tol), (split, task, name)
    # only rank 0 wrote: one line per epoch
    assert len(rundir.read_metrics(tmp_path / "ddp")) == ddp["epochs"]


def test_rep_grad_of_a_weighting_method_is_refused_under_ddp(tiny):
    """gradnorm's rep_grad trains through DDP's reducer, which the representation path skips;
    the gradient-aggregation methods (mgda_ub, any with rep_grad) run, exactly (see above)."""
    from hydranet.errors import SpecError
    from hydranet.train.distributed import Distributed

    spec = Spec.load(tiny())
    spec.balance.method = "gradnorm"
    spec.balance.rep_grad = True
    with pytest.raises(SpecError, match="balance.rep_grad.*'gradnorm'"):
        Distributed(rank=0, world_size=2).check_spec(spec)
    for method, rep in (("mgda_ub", False), ("pcgrad", True)):
        spec.balance.method, spec.balance.rep_grad = method, rep
        Distributed(rank=0, world_size=2).check_spec(spec)


def test_nproc_errors_are_one_line_each_without_a_traceback(tiny, tmp_path):
    """A spec DDP cannot run fails in the launcher before any rank starts; an error inside
    the ranks (a missing data file) is each rank's one line, torchrun's report kept out."""
    spec = tiny(arch="mmoe", epochs=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hydranet", "train", str(spec), "--no-progress", "--nproc", "2"]
    bad_spec = ["--set", "balance.method=gradnorm", "--set", "balance.rep_grad=true"]
    res = subprocess.run(
        [*cmd, "--out", str(tmp_path / "a"), *bad_spec], env=env, capture_output=True, text=True
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "hydranet: error: balance.rep_grad: 'gradnorm' with rep_grad = true cannot run under DDP "
        "(its representation gradients are per row and it trains through DDP's reducer); use "
        "rep_grad = false or train in one process"
    ]
    tiny.paths["train"].unlink()
    res = subprocess.run(
        [*cmd, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and "ChildFailedError" not in res.stderr
    # every rank that got that far says so; torchrun may stop the other first
    want = {
        f"hydranet: error: data file not found: {tiny.paths['train']}",
        f"hydranet (rank 1): error: data file not found: {tiny.paths['train']}",
    }
    assert lines and set(lines) <= want, lines


def test_sigterm_to_the_launcher_stops_the_ranks_and_the_run_resumes(tiny, tmp_path):
    """SIGTERM while the ranks train (held in the second epoch, see held_trunk: a signal sent
    once a checkpoint appeared raced the run, which could finish first on a busy machine)."""
    import signal

    from held_trunk import ARCHITECTURE, hold_env, wait_until_held

    spec = tiny(arch=ARCHITECTURE, epochs=20, checkpoint_every=5)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hydranet", "train", str(spec), "--no-progress", "--out", str(out)]
    # 10 steps per epoch: held before step 14, the checkpoint of step 10 (epoch 1's end) stands
    env = {**hold_env(tmp_path, after_steps=13), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--nproc", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_held(tmp_path, proc)
        assert (out / rundir.CHECKPOINT).exists(), "no checkpoint written"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    # rank 0's epoch lines go to stderr too; after them, one line and no traceback
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1] == "hydranet: stopped by SIGTERM; the ranks were stopped", err[-3000:]
    assert len(lines) == 2 and lines[0].startswith("epoch "), err[-3000:]
    assert not (out / rundir.FINAL).exists()
    res = subprocess.run(
        [*cmd, "--nproc", "2", "--resume"],
        env={**hold_env(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / rundir.FINAL).read_text())["epochs"] == 20
