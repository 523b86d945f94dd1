"""The GPU step path: static-index steps (a CUDA graph on CUDA), deferred host syncs, compile modes.

On CPU the captured graph is off; everything around it runs: the loader's row
indices, the static index buffer, the eager last batch, the on-device running
sums and divergence record, the constant task presence of a fully labeled split.
The ``gpu`` tests capture for real and run where CUDA is present.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet import Spec
from hydranet.errors import SpecError, TrainingDiverged
from hydranet.train.graph import GraphedStep, blockers
from hydranet.train.trainer import setup


def _spec(tiny, epochs: int = 2, **train) -> Spec:
    spec = Spec.load(tiny(epochs=epochs))
    return spec.model_copy(update={"train": spec.train.model_copy(update=train)})


def _fit(spec: Spec, out, static: bool, capture: bool = False):
    trainer = setup(spec, out, progress=False)
    if static:
        trainer.graph_step = GraphedStep(trainer, spec.train.batch_size, capture=capture)
    trainer.fit()
    return trainer


_ON_CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.fixture
def restore_determinism(monkeypatch):
    """``train.deterministic`` switches torch's process-wide mode on (and sets cuBLAS's
    workspace variable); both are put back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("device", ["cpu", _ON_CUDA])
def test_static_index_steps_equal_plain_steps_bit_for_bit(
    tiny, tmp_path, device, restore_determinism
):
    """600 rows at batch 64: 9 full batches through the static index buffer, the 10th (24
    rows) eagerly; parameters, optimizer state and logged losses equal the plain loop's.
    On CUDA with ``train.deterministic``: the embedding gradient is a sum by atomics
    otherwise, reordered from run to run (an H200 showed the two runs' tables differ)."""
    spec = _spec(tiny, epochs=2, grad_clip=1.0, device=device, deterministic=device == "cuda")
    plain = _fit(spec, tmp_path / "plain", static=False)
    static = _fit(spec, tmp_path / "static", static=True)
    assert static.graph_step.index.shape == (64,)
    for (name, a), (_, b) in zip(
        plain.model.state_dict().items(), static.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    sa, sb = plain.optimizer.state_dict()["state"], static.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    log_a = [r["train_loss"] for r in hydranet.Run.load(tmp_path / "plain").metrics_log]
    log_b = [r["train_loss"] for r in hydranet.Run.load(tmp_path / "static").metrics_log]
    assert log_a == log_b
    assert static.step == plain.step == 20


def test_fully_labeled_split_needs_no_presence_check(tiny, tmp_path):
    from conftest import make_table

    trainer = setup(_spec(tiny), tmp_path / "full", progress=False)
    assert trainer.all_labeled
    pq.write_table(make_table(600, seed=0, missing_frac=0.3), tiny.paths["train"])
    trainer = setup(_spec(tiny), tmp_path / "partial", progress=False)
    assert not trainer.all_labeled
    assert any("lack a label" in r for r in blockers(trainer))


def test_cuda_graph_on_says_why_it_cannot(tiny, tmp_path):
    spec = _spec(tiny, cuda_graph="on", device="cpu")
    spec = spec.model_copy(update={"balance": spec.balance.model_copy(update={"method": "uw"})})
    with pytest.raises(SpecError) as e:
        setup(spec, tmp_path / "on", progress=False)
    text = str(e.value)
    assert "train.cuda_graph" in text and "the device is cpu" in text and "'uw'" in text
    # auto on CPU: the plain loop, no error
    assert setup(_spec(tiny, device="cpu"), tmp_path / "auto", progress=False).graph_step is None


def test_divergence_checked_late_names_the_first_bad_step(tiny, tmp_path):
    """With the check every 7 steps (as on a GPU, every 32), the error still names the task
    and the step where the loss first went bad, and no checkpoint holds the diverged model."""
    table = pq.read_table(tiny.paths["train"])
    values = table.column("value").to_numpy().copy()
    values[300] = 1e38  # squared error overflows to inf
    pq.write_table(
        table.set_column(table.column_names.index("value"), "value", pa.array(values)),
        tiny.paths["train"],
    )
    messages = []
    for every in (1, 7):
        spec = _spec(tiny, epochs=3)
        spec.tasks[1].standardize = False
        trainer = setup(spec, tmp_path / f"every{every}", progress=False)
        trainer.check_every = every
        with pytest.raises(TrainingDiverged) as e:
            trainer.fit()
        messages.append(str(e.value).replace(f"every{every}", "RUN"))
    assert messages[0] == messages[1]
    assert "task 'value' is inf at step" in messages[0]


def test_compile_mode_reaches_torch_compile(tiny, tmp_path, monkeypatch):
    seen = []
    real = torch.compile

    def spy(model, **kw):
        seen.append(kw.get("mode"))
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", spy)
    run = hydranet.train(
        _spec(tiny, epochs=1, compile="max-autotune"), tmp_path / "m", progress=False
    )
    assert seen == ["max-autotune"] and run.final_metrics["epochs"] == 1
    from hydranet.cli import _load_spec

    with pytest.raises(SpecError, match="train.compile"):
        _load_spec(str(tiny(epochs=1)), ["train.compile=fastest"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_matches_eager_on_gpu(tiny, tmp_path):
    """Captured replays against the same static-index steps run eagerly: equal to float tolerance."""
    spec = _spec(tiny, epochs=2, device="cuda")
    eager = _fit(
        spec.model_copy(update={"train": spec.train.model_copy(update={"cuda_graph": "off"})}),
        tmp_path / "e",
        static=False,
    )
    graphed = setup(spec, tmp_path / "g", progress=False)
    assert graphed.graph_step is not None  # auto: eligible on CUDA
    graphed.fit()
    assert graphed.graph_step.graph is not None
    for (name, a), (_, b) in zip(
        eager.model.state_dict().items(), graphed.model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("device", ["cpu", _ON_CUDA])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_result(tiny, tmp_path, device):
    """On CUDA the step is a captured graph (capturable optimizer, lr as a device tensor, static
    index buffer): a run stopped mid-epoch and resumed from its checkpoint ends where an unbroken
    run ends. On CPU the same flow runs with plain steps (and keeps the test itself honest)."""
    spec = Spec.load(tiny(epochs=2, checkpoint_every=4))
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": device})})
    whole = setup(spec, tmp_path / "whole", progress=False)
    assert (whole.graph_step is not None) == (device == "cuda")
    whole.fit()
    part = setup(spec, tmp_path / "part", progress=False)
    part.fit(stop_after_steps=14)  # the second epoch's 4th step; the checkpoint is at step 12
    resumed = setup(spec, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 12
    resumed.fit()
    a = _flat(hydranet.Run.load(tmp_path / "whole").final_metrics)
    b = _flat(hydranet.Run.load(tmp_path / "part").final_metrics)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
        else:
            assert a[k] == b[k], k


def test_tensor_learning_rate_is_updated_in_place_and_survives_a_reload():
    """A captured optimizer step reads the lr tensor's memory: the scheduler must fill it, not
    replace it, and a reloaded optimizer gets device tensors back (device_lr_)."""
    from hydranet.spec import TrainSpec
    from hydranet.train.optim import build_scheduler, device_lr_

    cfg = TrainSpec(lr=0.5, schedule={"kind": "cosine", "warmup_steps": 2})
    param = torch.nn.Parameter(torch.zeros(3))
    # what build_optimizer(capturable=True) makes on CUDA, here on CPU without capturable
    opt = torch.optim.Adam([param], lr=torch.tensor(0.5), foreach=False)
    lr = opt.param_groups[0]["lr"]
    sched = build_scheduler(opt, cfg, total_steps=10)
    seen = []
    for _ in range(4):
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
        seen.append(float(lr))
        assert opt.param_groups[0]["lr"] is lr
    assert seen[0] == pytest.approx(0.5) and seen[-1] < 0.5
    assert isinstance(float(sched.get_last_lr()[0]), float)
    state = opt.state_dict()
    fresh = torch.optim.Adam([param], lr=0.1, foreach=False)
    fresh.load_state_dict(state)
    device_lr_(fresh, torch.device("cpu"))
    group = fresh.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(seen[-1])


def test_a_split_larger_than_half_the_free_gpu_memory_stays_on_the_host():
    from hydranet.data.loader import TensorData
    from hydranet.train.trainer import host_resident

    data = TensorData(
        {"x": torch.zeros(10, 4)},
        {"y": (torch.zeros(10),)},
        {"y": torch.ones(10, dtype=torch.bool)},
    )
    assert data.nbytes() == 10 * 4 * 4 + 10 * 4 + 10
    cuda = torch.device("cuda")
    assert host_resident(600, cuda, free=1000) and not host_resident(500, cuda, free=1000)
    assert not host_resident(10**15, torch.device("cpu"))  # a CPU holds it where it is


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_host_resident_split_trains_as_a_device_resident_one(tiny, tmp_path, monkeypatch, capsys):
    """Batches gathered on the host and copied per step give the same model as batches
    gathered on the GPU (and the step is not captured as a CUDA graph)."""
    from hydranet.train import trainer as trainer_mod

    spec = _spec(tiny, epochs=2, device="cuda")
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"cuda_graph": "off"})})
    on_device = setup(spec, tmp_path / "d", progress=False)
    on_device.fit()
    monkeypatch.setattr(trainer_mod, "host_resident", lambda nbytes, device, free=None: True)
    on_host = setup(spec, tmp_path / "h", progress=False)
    assert (
        on_host.train_data.device.type == "cpu"
        and "stays in host memory" in capsys.readouterr().err
    )
    on_host.fit()
    for (name, a), (_, b) in zip(
        on_device.model.state_dict().items(), on_host.model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
