"""The text feature kind and the bag encoder (the contract tests cover the generic checks).

Here: the fitted word-level tokenizer's ids (padding, truncation, null, unknown words, the
vocabulary cap), its JSON round trip, a tokenizer.json given by path, a missing or bad one as
one line naming it, the bag's mean against its written-out reference, a training run whose
label hangs on one word, and batch predict of such a run (serving it:
tests/test_serve_multimodal.py).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hydranet.errors import UserError
from hydranet.features import FeatureGroup, TextGroup
from hydranet.models.encoders import ENCODERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def words_of(group: TextGroup, ids: torch.Tensor) -> list[str]:
    return [group._tok.id_to_token(int(i)) for i in ids if int(i) != group.pad_id_]


def test_fitted_tokenizer_pads_truncates_and_maps_null_to_padding():
    train = pa.table({
        "title": ["Red cat", "red dog!", None, "the red cat, the big dog"],
        "body": ["a b c d e f g h", "", "cat", None],
    })  # fmt: skip
    group = TextGroup("t", ["title", "body"], max_tokens=4).fit(train)
    x = group.transform(train)
    assert x.dtype == torch.int64 and x.shape == (4, 2, 4) and x.is_contiguous()
    assert group.info() == {"vocab_size": group.n_ids, "pad_id": 0, "shape": [2, 4]}
    assert words_of(group, x[0, 0]) == ["red", "cat"]  # lower case
    assert x[0, 0, 2:].tolist() == [0, 0]  # padded after the text
    assert words_of(group, x[1, 0]) == ["red", "dog", "!"]  # punctuation a word of its own
    assert x[2, 0].tolist() == [0, 0, 0, 0]  # null: all padding
    assert x[3, 1].tolist() == [0, 0, 0, 0]
    assert x[1, 1].tolist() == [0, 0, 0, 0]  # an empty text too
    assert words_of(group, x[3, 0]) == ["the", "red", "cat", ","]  # truncated to max_tokens
    assert words_of(group, x[0, 1]) == ["a", "b", "c", "d"]
    # a word never seen in training is [UNK] (id 1), not padding and not an error
    y = group.transform(pa.table({"title": ["red zebra"], "body": pa.array([None], pa.string())}))
    assert words_of(group, y[0, 0]) == ["red", "[UNK]"] and y[0, 0, 1] == 1


def test_vocabulary_keeps_the_most_frequent_words():
    train = pa.table({"t": ["x x x y y z", "q y x"]})
    group = TextGroup("g", ["t"], vocab_size=4).fit(train)  # [PAD], [UNK] and two words
    assert group.n_ids == 4
    ids = group.transform(pa.table({"t": ["x y z q"]}))[0, 0]
    assert words_of(group, ids) == ["x", "y", "[UNK]", "[UNK]"]


def test_json_state_round_trip_gives_identical_ids():
    train = pa.table({"t": ["the red cat", "a big dog", "red red dog", None] * 5})
    group = TextGroup("g", ["t"], max_tokens=6).fit(train)
    back = FeatureGroup.from_dict(json.loads(json.dumps(group.to_dict())))
    other = pa.table({"t": ["dog cat unknown words here and more", None, "", "RED"]})
    assert torch.equal(back.transform(other), group.transform(other))
    assert back.to_dict() == group.to_dict()


def write_tokenizer(path, pad: bool = True) -> None:
    """A small BPE tokenizer.json, as Hugging Face writes them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[UNK]", "[PAD]"] if pad else ["[UNK]"]
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=special)
    tok.train_from_iterator(["the quick brown fox", "jumps over the lazy dog"] * 20, trainer)
    tok.save(str(path))


def test_tokenizer_json_by_path_is_kept_in_the_run(tmp_path):
    from tokenizers import Tokenizer

    path = tmp_path / "tokenizer.json"
    write_tokenizer(path)
    table = pa.table({"t": ["the lazy fox", "quick brown dog jumps over the lazy fox", None]})
    group = TextGroup("g", ["t"], tokenizer=str(path), max_tokens=5).fit(table)
    ref = Tokenizer.from_file(str(path))
    pad = ref.token_to_id("[PAD]")
    assert group.pad_id_ == pad and group.n_ids == ref.get_vocab_size()
    x = group.transform(table)
    want = ref.encode("the lazy fox").ids
    assert x[0, 0].tolist() == want + [pad] * (5 - len(want))
    assert x[1, 0].tolist() == ref.encode("quick brown dog jumps over the lazy fox").ids[:5]
    assert x[2, 0].tolist() == [pad] * 5
    # the fitted state holds the tokenizer: the run needs the file no more
    state = json.loads(json.dumps(group.to_dict()))
    path.unlink()
    assert torch.equal(FeatureGroup.from_dict(state).transform(table), x)


def test_tokenizer_without_a_pad_token_pads_with_a_new_id(tmp_path):
    path = tmp_path / "tokenizer.json"
    write_tokenizer(path, pad=False)
    group = TextGroup("g", ["t"], tokenizer=str(path), max_tokens=4)
    group.fit(pa.table({"t": ["the fox"]}))
    vocab = group._tok.get_vocab_size()
    assert group.pad_id_ == vocab and group.info()["vocab_size"] == vocab + 1
    x = group.transform(pa.table({"t": ["the fox"]}))
    assert (x[0, 0] < vocab).sum() == 2 and (x[0, 0] == vocab).sum() == 2


def test_missing_or_bad_tokenizer_file_is_one_line_naming_it(tmp_path):
    table = pa.table({"t": ["a b"]})
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(UserError) as e:
        TextGroup("g", ["t"], tokenizer=str(missing)).fit(table)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "'g'" in msg and "tokenizer.json" in msg
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError) as e:
        TextGroup("g", ["t"], tokenizer=str(bad)).fit(table)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_refuses_a_non_string_column():
    group = TextGroup("g", ["t"]).fit(pa.table({"t": ["a"]}))
    assert group.problems(pa.schema([("t", pa.int64())]), "data") == [
        "feature column 't' (group 'g') has type int64; a text column holds strings"
    ]
    with pytest.raises(UserError, match="'t' has type int64"):
        group.transform(pa.table({"t": [1, 2]}))


def test_bag_is_the_mean_of_non_pad_embeddings():
    cls = ENCODERS.get("bag")
    torch.manual_seed(0)
    group = {"kind": "text", "vocab_size": 10, "pad_id": 3, "shape": [2, 4]}
    enc = cls(group, None, d_embedding=5, init_std=1.0)
    ids = torch.tensor([
        [[1, 2, 3, 3], [3, 3, 3, 3]],  # column 1 all padding
        [[4, 4, 9, 0], [5, 3, 6, 3]],
    ])  # fmt: skip
    out = enc(ids)
    assert out.shape == (2, 10)
    w = enc.bag.weight.detach()
    table = [w[:10], w[10:20]]  # each column its own rows
    want = torch.stack([
        torch.cat([table[0][[1, 2]].mean(0), torch.zeros(5)]),
        torch.cat([table[0][[4, 4, 9, 0]].mean(0), table[1][[5, 6]].mean(0)]),
    ])  # fmt: skip
    torch.testing.assert_close(out, want)
    rows = torch.where(ids == 3, enc.bag.padding_idx, ids + enc.offsets).reshape(4, 4)
    torch.testing.assert_close(enc.reference(rows).reshape(2, 10), out)


# ------------------------------------------------------------------ end to end
FILLER = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "pi",
    "rho",
]


def review_table(n: int, seed: int) -> pa.Table:
    """The label is 1 when the review says "excellent" (5% of labels flipped); the numeric
    column and the title are noise, some reviews are null."""
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.5
    reviews: list[str | None] = []
    for g in good:
        words = list(rng.choice(FILLER, size=rng.integers(3, 12)))
        if g:
            words.insert(int(rng.integers(0, len(words) + 1)), "excellent")
        reviews.append(" ".join(words))
    label = good ^ (rng.random(n) < 0.05)
    for i in np.flatnonzero(rng.random(n) < 0.02):
        reviews[i] = None
    titles = [" ".join(rng.choice(FILLER, size=3)) for _ in range(n)]
    return pa.table({
        "review": reviews,
        "title": titles,
        "price": rng.normal(size=n),
        "liked": label.astype(np.int64),
    })  # fmt: skip


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    import hydranet

    tmp = tmp_path_factory.mktemp("text-run")
    paths = {}
    for i, (split, n) in enumerate([("train", 1200), ("validation", 400), ("test", 200)]):
        paths[split] = str(tmp / f"{split}.parquet")
        pq.write_table(review_table(n, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": "reviews",
        "data": paths,
        "features": [
            {"name": "words", "kind": "text", "columns": ["review", "title"],
             "params": {"max_tokens": 16}},
            {"name": "nums", "kind": "numeric", "columns": ["price"]},
        ],
        "tasks": [{"name": "liked", "kind": "binary"}],
        "model": {"architecture": "shared_bottom", "tower": [8],
                  "encoders": {"words": {"name": "bag", "params": {"d_embedding": 16}}}},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.01, "seed": 0},
    })  # fmt: skip
    run = hydranet.train(spec, tmp / "run", progress=False)
    return run, paths


def test_training_learns_a_label_that_hangs_on_one_word(text_run):
    run, paths = text_run
    auc = run.final_metrics["validation"]["liked"]["auc"]
    assert auc > 0.9, auc
    # a loaded run predicts from its own files (the tokenizer is in its state)
    from hydranet.run import Run

    loaded = Run.load(run.path)
    test = pq.read_table(paths["test"])
    a, b = run.predict_arrays(test), loaded.predict_arrays(test)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_batch_predict_takes_a_text_run(text_run, tmp_path):
    run, paths = text_run
    from hydranet.cli import main

    out = tmp_path / "p.parquet"
    assert main(["predict", str(run.path), paths["test"], "--output", str(out)]) == 0
    got = pq.read_table(out)
    want = run.predict_arrays(pq.read_table(paths["test"]))
    assert got.num_rows == 200
    np.testing.assert_allclose(got["liked"].to_numpy(), want["liked"].reshape(-1), rtol=1e-6)


def test_cli_train_with_a_missing_tokenizer_is_one_line_naming_it(tmp_path, capsys):
    from hydranet.cli import main

    pq.write_table(review_table(50, seed=0), tmp_path / "train.parquet")
    missing = tmp_path / "tok" / "tokenizer.json"
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"""
name = "reviews"
[data]
train = "{tmp_path / "train.parquet"}"
[[features]]
name = "words"
kind = "text"
columns = ["review"]
params = {{ tokenizer = "{missing}" }}
[[tasks]]
name = "liked"
kind = "binary"
"""
    )
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "'words'" in err, err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_vocab_size_with_a_given_tokenizer_is_a_spec_error():
    import hydranet
    from hydranet.errors import SpecError

    base = {
        "name": "t",
        "data": {"train": "x.parquet"},
        "tasks": [{"name": "y", "kind": "binary"}],
    }
    group = {"name": "words", "kind": "text", "columns": ["t"]}
    params = {"tokenizer": "tokenizer.json", "vocab_size": 100}
    with pytest.raises(SpecError, match="vocab_size") as e:
        hydranet.Spec.from_dict({**base, "features": [{**group, "params": params}]})
    assert "features" in str(e.value) and "leave it out" in str(e.value)
    hydranet.Spec.from_dict({**base, "features": [{**group, "params": {"vocab_size": 100}}]})


def test_a_relative_tokenizer_path_means_the_spec_files_directory(tmp_path, monkeypatch):
    # like data paths: a spec in A naming "tok/tokenizer.json" reads A/tok/tokenizer.json
    # whatever the working directory, and the run stores the absolute path
    from hydranet.spec import Spec

    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    spec = tmp_path / "A" / "spec.toml"
    spec.write_text(
        """
name = "reviews"
[data]
train = "train.parquet"
[[features]]
name = "words"
kind = "text"
columns = ["review"]
params = { tokenizer = "tok/tokenizer.json" }
[[tasks]]
name = "liked"
kind = "binary"
"""
    )
    monkeypatch.chdir(tmp_path / "B")
    loaded = Spec.load(spec)
    assert loaded.features[0].params["tokenizer"] == str(tmp_path / "A" / "tok" / "tokenizer.json")
    assert loaded.data.train == str(tmp_path / "A" / "train.parquet")
