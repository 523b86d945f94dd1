"""A text encoder sharded with FSDP (fully_shard, gloo on CPU) beside DDP for the rest.

Two ranks train the same spec with and without ``train.shard_encoders``: FSDP's
reduce-scatter averages the encoder's gradients as DDP's all-reduce does, so both runs end
with the same weights up to float summation order. Each rank holds half the encoder's
parameters; the saved model and checkpoints hold full tensors, which load in one process.
"""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

import hydranet
from hydranet import Spec, rundir
from hydranet.errors import SpecError, UserError
from hydranet.run import Run
from hydranet.train.distributed import Distributed
from hydranet.train.state_io import load_tensors
from hydranet.train.trainer import setup

VOCAB = 3000  # words: the bag encoder's table (VOCAB + specials) x 16 is the large part


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, VOCAB, size=(n, 6))
    x = rng.normal(size=n)
    label = ((words % 7 == 0).any(axis=1) ^ (x > 1)).astype(np.int64)
    return pa.table({
        "review": [" ".join(f"w{w}" for w in row) for row in words],
        "price": x,
        "liked": label,
        "score": x + (words[:, 0] % 3),
    })  # fmt: skip


def _spec(tmp: Path, **train) -> Spec:
    paths = {}
    for i, (split, n) in enumerate([("train", 600), ("validation", 200), ("test", 100)]):
        paths[split] = str(tmp / f"{split}.parquet")
        if not Path(paths[split]).exists():
            pq.write_table(_table(n, seed=i), paths[split])
    return Spec.from_dict({
        "name": "fsdp",
        "data": paths,
        "features": [
            {"name": "words", "kind": "text", "columns": ["review"],
             "params": {"max_tokens": 8, "vocab_size": VOCAB + 10}},
            {"name": "nums", "kind": "numeric", "columns": ["price"]},
        ],
        "tasks": [{"name": "liked", "kind": "binary"}, {"name": "score", "kind": "regression"}],
        "model": {"architecture": "shared_bottom", "tower": [8],
                  "encoders": {"words": {"name": "bag", "params": {"d_embedding": 16}}}},
        # early stopping: rank 0 saves and restores the best weights from its full replica;
        # grad_clip: the norm over the encoder's shards and the rest (small enough to clip)
        "train": {"epochs": 2, "batch_size": 63, "lr": 0.01, "seed": 0, "grad_clip": 0.05,
                  "early_stopping": {"metric": "liked.auc", "patience": 5}, **train},
        "balance": {"method": "uw"},
    })  # fmt: skip


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    tmp = Path(tmp)
    sharded = _spec(tmp, shard_encoders=["words"])
    trainer = setup(sharded, tmp / "sharded", progress=False)
    encoder = trainer.model.encoder.encoders["words"]
    local = sum(p.to_local().numel() for p in encoder.parameters())
    (tmp / f"numel{rank}.json").write_text(json.dumps(local))
    trainer.fit()
    trainer.dist.barrier()
    setup(_spec(tmp), tmp / "ddp", progress=False).fit()
    trainer.dist.barrier()
    # a sharded run stopped mid-epoch 2 (checkpoint at step 14) and resumed ends where the
    # uninterrupted one did
    again = _spec(tmp, shard_encoders=["words"], checkpoint_every=14)
    setup(again, tmp / "resumed", progress=False).fit(stop_after_steps=15)
    trainer.dist.barrier()
    setup(again, tmp / "resumed", resume=True, progress=False).fit()
    trainer.dist.barrier()
    torch.distributed.destroy_process_group()


def test_sharded_encoder_trains_as_ddp_and_loads_in_one_process(tmp_path):
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_worker, args=(2, store.port, str(tmp_path)), nprocs=2, join=True)
    del store

    one = setup(_spec(tmp_path), tmp_path / "count", progress=False)
    total = sum(p.numel() for p in one.model.encoder.encoders["words"].parameters())
    assert total > 30_000  # the words seen in training (~2100 of VOCAB) x 16
    per_rank = [json.loads((tmp_path / f"numel{r}.json").read_text()) for r in (0, 1)]
    assert sum(per_rank) == total and abs(per_rank[0] - per_rank[1]) <= 16, (per_rank, total)

    sharded, _ = load_tensors(tmp_path / "sharded" / rundir.WEIGHTS)
    ddp, _ = load_tensors(tmp_path / "ddp" / rundir.WEIGHTS)
    assert sharded.keys() == ddp.keys()
    for k, v in ddp.items():
        torch.testing.assert_close(sharded[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: k + m)
    test = pq.read_table(tmp_path / "test.parquet")
    a = Run.load(tmp_path / "sharded").predict_arrays(test)
    b = Run.load(tmp_path / "ddp").predict_arrays(test)
    for k in b:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    whole = json.loads((tmp_path / "sharded" / rundir.FINAL).read_text())
    resumed = json.loads((tmp_path / "resumed" / rundir.FINAL).read_text())
    assert resumed == whole


def test_shard_encoders_names_groups_and_refuses_gradient_methods_and_diagnose(tmp_path):
    spec = _spec(tmp_path).to_dict()
    spec["train"]["shard_encoders"] = ["wordz"]
    with pytest.raises(SpecError, match=r"train.shard_encoders.*no feature group 'wordz'"):
        hydranet.Spec.from_dict(spec)
    spec = _spec(tmp_path, shard_encoders=["words"])
    spec.balance.method = "pcgrad"
    with pytest.raises(SpecError, match=r"train.shard_encoders: .*'pcgrad'.*autograd.grad"):
        Distributed(rank=0, world_size=2).check_spec(spec)
    spec.balance.method = "uw"
    Distributed(rank=0, world_size=2).check_spec(spec)
    with pytest.raises(UserError, match=r"--diagnose cannot run with train.shard_encoders"):
        Distributed(rank=0, world_size=2).check_spec(spec, diagnose=True)
