"""Issue 16 point 4: transfer learning for any encoder with ``pretrained = True``.

The machinery (hydranet.train.transfer) is checked with a tiny test-only pretrained encoder on
the text kind, whose "pretrained" weights are a safetensors file written here: frozen
training on cached embeddings, partial unfreezing (and exact resume across it), one optimizer
group per pretrained encoder, and what the balancers see as shared.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import hydranet
from hydranet.models.encoders import ENCODERS, Encoder
from hydranet.train import transfer
from hydranet.train.trainer import setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, D = 10, 8  # 8 words, [PAD] and [UNK]


class TinyPretrained(Encoder):
    """Mean of token embeddings → Linear + Dropout → Linear, per column; three blocks."""

    kinds = ("text",)
    pretrained = True
    path_params = ("weights",)

    def __init__(
        self,
        group,
        model_spec=None,
        state=None,
        weights: str | None = None,
        freeze: bool = True,
        unfreeze_after: int | None = None,
        unfreeze_blocks: int = 1,
        lr_scale: float = 0.1,
    ):
        super().__init__(group, model_spec, state)
        self.weights, self.freeze, self.unfreeze_after = weights, freeze, unfreeze_after
        self.unfreeze_blocks, self.lr_scale = unfreeze_blocks, lr_scale
        self.pad_id, self.n_columns = int(group["pad_id"]), int(group["shape"][0])
        self.emb = nn.Embedding(int(group["vocab_size"]), D)
        # dropout: frozen parts must run in eval mode, or the cache would not be the encoder
        self.mid = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Dropout(0.5))
        self.top = nn.Linear(D, D)
        self.load_state_dict(load_file(weights))
        self.out_dim = self.n_columns * D

    def blocks(self):
        return [self.emb, self.mid, self.top]

    def forward(self, ids):
        b, c, _ = ids.shape
        keep = (ids != self.pad_id).unsqueeze(-1).float()
        mean = (self.emb(ids) * keep).sum(2) / keep.sum(2).clamp(min=1.0)
        return self.top(self.mid(mean)).reshape(b, c * D)


if "tiny_pretrained" not in ENCODERS:
    ENCODERS.add("tiny_pretrained", TinyPretrained)

WORDS = ["good", "bad", "red", "blue", "cat", "dog", "sun", "moon"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))) for _ in range(n)]
    y = [int("good" in t) for t in texts]
    x = rng.normal(size=n)
    return pa.table({"t": texts, "x": x, "y": y, "r": 2 * x + rng.normal(size=n)})


@pytest.fixture
def make_spec(tmp_path):
    paths = {}
    for i, (split, n) in enumerate([("train", 192), ("validation", 64)]):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(_table(n, i), paths[split])
    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    ref = nn.ModuleDict(
        {
            "emb": nn.Embedding(VOCAB, D),
            "mid": nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Dropout(0.5)),
            "top": nn.Linear(D, D),
        }
    )
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, weights)

    def make(balance: str = "ew", epochs: int = 2, **params) -> hydranet.Spec:
        return hydranet.Spec.from_dict({
            "data": paths,
            "features": [
                {"name": "words", "kind": "text", "columns": ["t"],
                 "params": {"max_tokens": 6, "vocab_size": VOCAB}},
                {"name": "nums", "kind": "numeric", "columns": ["x"]},
            ],
            "tasks": [{"name": "y", "kind": "binary"}, {"name": "r", "kind": "regression"}],
            "model": {"architecture": "shared_bottom", "tower": [4], "params": {"hidden": [8]},
                      "encoders": {"words": {"name": "tiny_pretrained",
                                             "params": {"weights": str(weights), **params}}}},
            "balance": {"method": balance},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, "seed": 0},
        })  # fmt: skip

    return make


def _encoder_state(model) -> dict[str, torch.Tensor]:
    enc = model.encoder.encoders["words"]
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def test_frozen_training_runs_on_cached_embeddings_and_the_run_takes_raw_text(make_spec, tmp_path):
    spec = make_spec()
    trainer = setup(spec, tmp_path / "run", progress=False)
    assert trainer.model.encoder.pre_encoded == {"words"}
    # training sees [N, out_dim] embeddings, not ids
    assert trainer.splits["train"].data.features["words"].shape == (192, D)
    assert trainer.splits["train"].data.features["words"].dtype == torch.float32
    before = _encoder_state(trainer.model)
    trainer.fit()
    after = _encoder_state(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the encoder never trained
    cached = sorted(transfer.cache_dir().glob("*.npy"))
    assert len(cached) >= 2  # train and validation

    # the saved run holds the encoder and takes the raw column; its predictions are the
    # trained model's on the cached embeddings
    run = hydranet.Run.load(tmp_path / "run")
    assert run.model.encoder.pre_encoded == set()
    table = pq.read_table(spec.data.validation)
    got = run.predict(table)["y"]
    model = trainer.model.eval()
    with torch.no_grad():
        feats = trainer.splits["validation"].data.features
        want = torch.sigmoid(model(feats)["y"]).squeeze(-1).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)

    # a second run reuses the cache: the files are not written again
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    hydranet.train(spec, tmp_path / "run2", progress=False)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert sorted(transfer.cache_dir().glob("*.npy")) == cached


def test_unfreezing_trains_the_last_blocks_from_its_epoch_and_logs_it(make_spec, tmp_path, capsys):
    spec = make_spec(epochs=3, unfreeze_after=1, unfreeze_blocks=2, lr_scale=0.5)
    trainer = setup(spec, tmp_path / "run", progress=False)
    assert trainer.model.encoder.pre_encoded == set()  # no cache for an encoder that trains
    # one optimizer group per pretrained encoder, holding its frozen parameters too
    groups = trainer.optimizer.param_groups
    enc = trainer.model.encoder.encoders["words"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.005)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in enc.parameters()}
    start = _encoder_state(trainer.model)
    trainer.fit(stop_after_steps=6)  # the whole first epoch: still frozen
    assert all(torch.equal(start[k], v) for k, v in _encoder_state(trainer.model).items())
    assert not enc.mid[2].training  # frozen blocks stay in eval mode (dropout off)
    trainer.fit()
    # the unfrozen blocks train in train mode (dropout on), the frozen one stays in eval mode
    assert trainer.model.training and enc.mid[2].training and not enc.emb.training
    end = _encoder_state(trainer.model)
    assert torch.equal(end["emb.weight"], start["emb.weight"])  # not among the last two
    assert not torch.equal(end["top.weight"], start["top.weight"])
    assert not torch.equal(end["mid.0.weight"], start["mid.0.weight"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "trains its last" in x]
    assert lines == [
        "hydranet: epoch 2: the encoder of feature group 'words' trains its last 2 of 3 blocks "
        "from now on, at 0.5 x train.lr"
    ]


def test_resume_across_unfreezing_is_exact(make_spec, tmp_path):
    spec = make_spec(epochs=3, unfreeze_after=1)
    whole = hydranet.train(spec, tmp_path / "whole", progress=False)
    # interrupted in the second epoch, after the encoder unfroze, and resumed
    setup(spec, tmp_path / "cut", progress=False).fit(stop_after_steps=8)
    hydranet.train(spec, tmp_path / "cut", resume=True, progress=False)
    resumed = hydranet.Run.load(tmp_path / "cut")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_balancers_see_the_trunk_and_pretrained_encoders_get_the_summed_gradient(
    make_spec, tmp_path
):
    trainer = setup(make_spec("upgrad", freeze=False), tmp_path / "run", progress=False)
    enc_ids = {id(p) for p in trainer.model.encoder.encoders["words"].parameters()}
    assert not enc_ids & {id(p) for p in trainer.shared_params}
    assert enc_ids <= {id(p) for p in trainer.task_params}
    assert trainer.shared_params  # the trunk's shared layers remain
    before = _encoder_state(trainer.model)
    trainer.fit(stop_after_steps=2)
    after = _encoder_state(trainer.model)
    assert not torch.equal(before["emb.weight"], after["emb.weight"])  # fine-tuned


def test_a_frozen_backbone_caches_before_its_projection_which_trains(tmp_path):
    """mobilenet_v2 with ``out_dim``: the cached embeddings are the frozen backbone's, and
    the projection after them (its head) trains on them, frozen or not."""
    from torchvision.models import mobilenet_v2

    from hydranet.models.model import MultiTaskModel
    from hydranet.spec import ModelSpec

    torch.manual_seed(0)
    pth = tmp_path / "mobilenet_v2.pth"
    torch.save(mobilenet_v2().state_dict(), pth)
    group = {"kind": "image", "shape": [2, 3, 32, 32]}
    spec = ModelSpec(
        architecture="shared_bottom",
        encoders={"pics": {"name": "mobilenet_v2", "params": {"weights": str(pth), "out_dim": 4}}},
    )
    model = MultiTaskModel({"pics": group}, {"y": 1}, spec).eval()
    enc = model.encoder.encoders["pics"]
    transfer.set_epoch(model, 0)
    assert all(p.requires_grad for p in enc.proj.parameters())
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    x = torch.randint(0, 256, (5, 2, 3, 32, 32), dtype=torch.uint8)
    cached = transfer.embed(enc, x, torch.device("cpu"))
    assert cached.shape == (5, 2 * 1280)  # before the projection
    want = model({"pics": x})["y"]
    model.encoder.pre_encoded = {"pics"}
    got = model({"pics": cached})["y"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    # the key names what is cached: a changed head does not change it, a changed backbone does
    key = transfer.cache_key(enc, x, torch.device("cpu"))
    with torch.no_grad():
        enc.proj.weight.add_(1.0)
        assert transfer.cache_key(enc, x, torch.device("cpu")) == key
        next(enc.backbone.parameters()).add_(1.0)
        assert transfer.cache_key(enc, x, torch.device("cpu")) != key
