"""Sources, splits, the preprocessor and the batch loader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from hydranet.data.loader import BatchLoader, TensorData, build_tensor_data
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import iter_batches, load_splits, read_table
from hydranet.errors import DataError
from hydranet.spec import DataSpec, TaskSpec
from hydranet.tasks import build_task


def _table(n: int = 100, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": np.arange(n),
            "x": rng.normal(5.0, 2.0, n),
            "k": rng.choice(["a", "b", "c"], n),
            "y": rng.integers(0, 2, n),
        }
    )


# ---------------------------------------------------------------- sources
def test_read_parquet_file_with_columns(tmp_path):
    pq.write_table(_table(), tmp_path / "d.parquet")
    t = read_table(str(tmp_path / "d.parquet"), columns=["x", "id"])
    assert t.column_names == ["x", "id"]
    assert t.num_rows == 100


def test_read_directory_skips_markers_and_reads_all_parts(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(_table(30, seed=1), d / "part-0.parquet")
    pq.write_table(_table(20, seed=2), d / "part-1.parquet")
    (d / "_SUCCESS").write_text("")
    (d / ".part-0.parquet.crc").write_text("junk")
    assert read_table(str(d)).num_rows == 50


def test_read_glob_and_csv(tmp_path):
    for i in range(3):
        pacsv.write_csv(_table(10, seed=i), tmp_path / f"chunk{i}.csv")
    t = read_table(str(tmp_path / "chunk*.csv"))
    assert t.num_rows == 30
    assert pa.types.is_floating(t.schema.field("x").type)
    one = read_table(str(tmp_path / "chunk0.csv"), format="csv", columns=["k"])
    assert one.column("k").to_pylist() == _table(10, seed=0).column("k").to_pylist()


def test_explicit_format_overrides_the_extension(tmp_path):
    pacsv.write_csv(_table(5), tmp_path / "rows.txt")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_table(str(tmp_path / "rows.txt"))
    assert read_table(str(tmp_path / "rows.txt"), format="csv").num_rows == 5


@pytest.mark.parametrize("name", ["missing.parquet", "nothing*.parquet", "nodir/"])
def test_not_found(tmp_path, name):
    with pytest.raises(DataError, match="data file not found"):
        read_table(str(tmp_path / name))


def test_corrupt_empty_and_missing_column(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match=r"cannot read .*bad\.parquet"):
        read_table(str(tmp_path / "bad.parquet"))
    pq.write_table(_table(0), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="has no rows"):
        read_table(str(tmp_path / "empty.parquet"))
    pq.write_table(_table(), tmp_path / "d.parquet")
    with pytest.raises(
        DataError, match=r"column 'nope' not found in .*d\.parquet; columns: id, x, k, y"
    ):
        read_table(str(tmp_path / "d.parquet"), columns=["x", "nope"])
    # every missing column at once, one line each, then the columns there are
    with pytest.raises(DataError) as e:
        read_table(str(tmp_path / "d.parquet"), columns=["nope", "x", "nada"])
    lines = str(e.value).splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["'nope'", "'nada'"]
    assert len(lines) == 3 and lines[2].endswith(": id, x, k, y")


def test_iter_batches_bounded_and_complete(tmp_path):
    pq.write_table(_table(1000), tmp_path / "d.parquet", row_group_size=300)
    batches = list(iter_batches(str(tmp_path / "d.parquet"), columns=["id"], batch_rows=128))
    assert max(b.num_rows for b in batches) <= 128
    ids = pa.Table.from_batches(batches).column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1000))
    with pytest.raises(DataError, match="column 'zz' not found"):
        iter_batches(str(tmp_path / "d.parquet"), columns=["zz"])  # checked at call time


# ---------------------------------------------------------------- splits
def test_fraction_splits_partition_train(tmp_path):
    pq.write_table(_table(1000), tmp_path / "d.parquet")
    spec = DataSpec(
        train=str(tmp_path / "d.parquet"), validation_fraction=0.1, test_fraction=0.2, split_seed=7
    )
    s = load_splits(spec, ["id", "x"])
    assert list(s) == ["train", "validation", "test"]
    sizes = {k: v.num_rows for k, v in s.items()}
    assert sizes == {"train": 700, "validation": 100, "test": 200}
    ids = np.concatenate([v.column("id").to_numpy() for v in s.values()])
    np.testing.assert_array_equal(np.sort(ids), np.arange(1000))
    again = load_splits(spec, ["id", "x"])
    assert again["test"].equals(s["test"])
    other = load_splits(spec.model_copy(update={"split_seed": 8}), ["id", "x"])
    assert not other["test"].equals(s["test"])


def test_split_files_win_and_absent_splits(tmp_path):
    pq.write_table(_table(100), tmp_path / "tr.parquet")
    pq.write_table(_table(40, seed=3), tmp_path / "va.parquet")
    spec = DataSpec(
        train=str(tmp_path / "tr.parquet"),
        validation=str(tmp_path / "va.parquet"),
        validation_fraction=0.5,
    )
    s = load_splits(spec, ["x", "x", "y"])
    assert list(s) == ["train", "validation"]
    assert s["train"].num_rows == 100 and s["validation"].num_rows == 40
    assert s["train"].column_names == ["x", "y"]


def test_fractions_leaving_no_train_rows(tmp_path):
    pq.write_table(_table(3), tmp_path / "d.parquet")
    spec = DataSpec(train=str(tmp_path / "d.parquet"), validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="leave no training rows"):
        load_splits(spec, ["x"])


# ---------------------------------------------------------------- preprocessor
def _mixed() -> pa.Table:
    return pa.table(
        {
            "a": [1.0, None, 3.0, float("nan"), 5.0, 7.0],
            "b": pa.array([10, -100, 0, 1000, 5, 6], pa.int32()),
            "c": ["x", "y", None, "x", "z", "x"],
            "d": [3, 3, 1, 2, 2, 9],
        }
    )


def test_numeric_scaling_missing_and_indicator():
    t = _mixed()
    pre = Preprocessor.tabular(["a", "b"], [], log1p=["b"]).fit(t)
    out = pre.transform(t)
    assert list(out) == ["numeric"]  # no categorical group at all
    num = out["numeric"]
    assert num.dtype == torch.float32 and num.is_contiguous()
    group = pre.groups["numeric"]
    assert group.names_out == ["a", "b", "a__missing"] and pre.info()["numeric"]["width"] == 3
    np.testing.assert_allclose(group.mean_[0], 4.0)
    np.testing.assert_allclose(num[[0, 2, 4, 5], 0].mean().item(), 0.0, atol=1e-6)
    assert num[1, 0] == 0 and num[3, 0] == 0  # null and NaN → the mean
    assert num[:, 2].tolist() == [0, 1, 0, 1, 0, 0]
    b = np.array([10, -100, 0, 1000, 5, 6], dtype=np.float64)
    lb = np.sign(b) * np.log1p(np.abs(b))
    np.testing.assert_allclose(num[:, 1].numpy(), (lb - lb.mean()) / lb.std(), rtol=1e-5)


def test_constant_column_and_non_numeric_type():
    t = pa.table({"c": [2.0, 2.0, 2.0], "s": ["1", "2", "3"]})
    pre = Preprocessor.tabular(["c"], []).fit(t)
    assert pre.groups["numeric"].scale_ == [1.0]
    assert pre.transform(t)["numeric"].abs().sum() == 0
    with pytest.raises(DataError, match="feature column 's' \\(group 'numeric'\\) has type string"):
        Preprocessor.tabular(["s"], []).fit(t)


def test_categorical_vocab_oov_missing_min_count():
    t = _mixed()
    pre = Preprocessor.tabular([], ["c", "d"]).fit(t)
    group = pre.groups["categorical"]
    # by descending count then value
    assert group.vocabularies_ == {"c": ["x", "y", "z"], "d": ["2", "3", "1", "9"]}
    assert group.cardinalities == [5, 6]
    out = pre.transform(t)
    cat = out["categorical"]
    assert list(out) == ["categorical"] and cat.dtype == torch.int64 and cat.is_contiguous()
    assert cat[:, 0].tolist() == [2, 3, 1, 2, 4, 2]
    new = pa.table({"c": ["z", "never", None], "d": [9, 4, None]})
    assert pre.transform(new)["categorical"].tolist() == [[4, 5], [0, 0], [1, 1]]
    pre2 = Preprocessor.tabular([], ["c", "d"], min_count=2).fit(t)
    assert pre2.groups["categorical"].vocabularies_ == {"c": ["x"], "d": ["2", "3"]}
    assert pre2.transform(t)["categorical"][:, 1].tolist() == [3, 3, 0, 2, 2, 0]
    assert pre2.feature_names_out == ["c", "d"]


def test_missing_feature_column_and_not_fitted():
    pre = Preprocessor.tabular(["a", "b"], ["c", "d"])
    with pytest.raises(RuntimeError, match="not fitted"):
        pre.transform(_mixed())
    pre.fit(_mixed())
    with pytest.raises(DataError, match="feature column 'c' \\(group 'categorical'\\) not found"):
        pre.transform(_mixed().drop_columns(["c"]))
    # every missing column is reported, one line each
    with pytest.raises(DataError) as e:
        pre.transform(_mixed().drop_columns(["a", "c", "d"]))
    lines = str(e.value).splitlines()
    assert [line.split()[2] for line in lines[:3]] == ["'c'", "'d'", "'a'"]
    assert len(lines) == 4 and lines[3].startswith("columns of the input: b")


def test_json_round_trip_identical_transform(tmp_path):
    t = _mixed()
    pre = Preprocessor.tabular(["a", "b"], ["c", "d"], log1p=["b"], min_count=1).fit(t)
    pre.save(tmp_path / "pre.json")
    json.loads((tmp_path / "pre.json").read_text())  # plain JSON, no pickle
    back = Preprocessor.load(tmp_path / "pre.json")
    a, b = pre.transform(t), back.transform(t)
    assert list(a) == list(b) == ["categorical", "numeric"]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert back.to_dict() == pre.to_dict()


def test_streaming_partial_fit_equals_fit():
    rng = np.random.default_rng(0)
    n = 5000
    x = rng.normal(1e4, 3.0, n)
    x[rng.random(n) < 0.05] = np.nan
    t = pa.table(
        {
            "x": x,
            "k": rng.choice(list("abcdefgh"), n, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.04, 0.01]),
        }
    )
    one = Preprocessor.tabular(["x"], ["k"], min_count=40).fit(t)
    stream = Preprocessor.tabular(["x"], ["k"], min_count=40)
    for batch in t.to_batches(max_chunksize=333):
        stream.partial_fit(batch)
    stream.finish()
    o_cat, s_cat = one.groups["categorical"], stream.groups["categorical"]
    o_num, s_num = one.groups["numeric"], stream.groups["numeric"]
    assert s_cat.vocabularies_ == o_cat.vocabularies_ and stream.n_rows_seen_ == n
    np.testing.assert_allclose(s_num.mean_, o_num.mean_, rtol=1e-12)
    np.testing.assert_allclose(s_num.scale_, o_num.scale_, rtol=1e-9)
    np.testing.assert_allclose(o_num.scale_[0], np.nanstd(x), rtol=1e-9)
    assert torch.equal(one.transform(t)["categorical"], stream.transform(t)["categorical"])


# ---------------------------------------------------------------- loader
def _data(n: int = 103) -> TensorData:
    ids = torch.arange(n)
    return TensorData(
        features={"cat": ids[:, None].repeat(1, 2).contiguous(), "num": ids[:, None].float()},
        targets={"t": (ids.float(), -ids.float())},
        masks={"t": ids % 3 != 0},
    )


def _ids(batches) -> list[list[int]]:
    return [b.features["cat"][:, 0].tolist() for b in batches]


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_row_once_per_epoch(drop_last):
    loader = BatchLoader(_data(), batch_size=10, seed=3, drop_last=drop_last)
    assert len(loader) == (10 if drop_last else 11)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        seen = sum(_ids(batches), [])
        assert len(seen) == len(set(seen)) == (100 if drop_last else 103)
        for b in batches:  # every field gathered with the same indices
            cat, num = b.features["cat"], b.features["num"]
            assert torch.equal(num[:, 0].long(), cat[:, 0]) and b.size == cat.shape[0]
            assert torch.equal(b.masks["t"], cat[:, 0] % 3 != 0)
            # a task's second target tensor travels with its first
            assert torch.equal(b.targets["t"][1], -b.targets["t"][0])
    assert loader.epoch == 2


def test_determinism_by_seed_and_epoch():
    a, b, c = (BatchLoader(_data(), 16, seed=s) for s in (1, 1, 2))
    ea, eb, ec = _ids(a), _ids(b), _ids(c)
    assert ea == eb and ea != ec
    assert _ids(a) != ea  # the next epoch has its own order
    b.set_epoch(1)
    a.set_epoch(1)
    assert _ids(b) == _ids(a)
    assert _ids(BatchLoader(_data(), 16, shuffle=False)) == [
        list(range(i, min(i + 16, 103))) for i in range(0, 103, 16)
    ]


def test_order_is_the_cpu_permutation_of_seed_plus_epoch():
    loader = BatchLoader(_data(), 10, seed=7)
    for epoch in (0, 3):
        want = torch.randperm(103, generator=torch.Generator().manual_seed(7 + epoch))
        assert torch.equal(loader.order(epoch), want)


def test_resume_mid_epoch_yields_exactly_the_rest():
    ref = BatchLoader(_data(), 10, seed=5)
    ref.set_epoch(4)
    full = _ids(ref)
    live = BatchLoader(_data(), 10, seed=5)
    live.set_epoch(4)
    it = iter(live)
    head = [next(it) for _ in range(4)]
    state = live.state_dict()
    assert state == {"epoch": 4, "position": 4, "seed": 5}
    restored = BatchLoader(_data(), 10, seed=0)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert _ids(head) + _ids(restored) == full
    assert restored.state_dict() == {"epoch": 5, "position": 0, "seed": 5}


def test_build_tensor_data_with_tasks():
    t = pa.table(
        {"x": [1.0, 2.0, 3.0], "k": ["a", "b", "a"], "y": [1, None, 0], "r": [0.5, 1.5, None]}
    )
    pre = Preprocessor.tabular(["x"], ["k"]).fit(t)
    tasks = [
        build_task(TaskSpec(name="y", kind="binary")).fit(t),
        build_task(TaskSpec(name="r", kind="regression", standardize=False)).fit(t),
    ]
    data = build_tensor_data(t, pre, tasks)
    assert len(data) == 3
    assert {k: tuple(v.shape) for k, v in data.features.items()} == {
        "categorical": (3, 1),
        "numeric": (3, 1),
    }
    assert data.masks["y"].dtype == torch.bool and data.masks["y"].tolist() == [True, False, True]
    assert data.targets["y"][0].tolist() == [1.0, 0.0, 0.0]
    assert data.masks["r"].tolist() == [True, True, False]
    batch = data.take(torch.tensor([2, 0]))
    assert batch.size == 2 and batch.targets["r"][0].tolist() == [0.0, 0.5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_has_the_cpu_order_and_resumes():
    data = _data().to("cuda")
    loader = BatchLoader(data, 10, seed=2)
    assert loader.order().device.type == "cuda"
    full = _ids(loader)
    # the same batches as on the CPU: a GPU checkpoint resumes on a CPU with its order
    assert full == _ids(BatchLoader(_data(), 10, seed=2))
    assert sorted(sum(full, [])) == list(range(103))
    loader.set_epoch(0)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    restored = BatchLoader(data, 10)
    restored.load_state_dict(loader.state_dict())
    assert _ids(head) + _ids(restored) == full


def test_numeric_values_beyond_float32_are_refused_at_fit_unless_log1p():
    # the model computes in float32: 1e300 would become inf once scaled and its rows' predictions
    # NaN; predict and the server refuse such a value, so training does too (log1p tames it)
    from hydranet.features.numeric import NumericGroup

    table = pa.table({"a": [1.0, 2.0, 1e300, 3.0], "b": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(
        DataError, match=r"numeric column 'a' has 1 value\(s\) beyond float32.*1e\+300.*log1p"
    ):
        NumericGroup("numeric", ["a", "b"]).partial_fit(table)
    group = NumericGroup("numeric", ["a", "b"], log1p=["a"]).partial_fit(table).finish()
    assert np.isfinite(group.transform(table).numpy()).all()


def test_numeric_transform_refuses_values_beyond_float32_once_scaled():
    # a validation or test split holding 1e300 (training's fit did not see it): an error naming
    # the column and the row, not inf features and NaN metrics
    from hydranet.features.numeric import NumericGroup

    group = NumericGroup("numeric", ["a"]).partial_fit(pa.table({"a": [1.0, 2.0, 3.0]})).finish()
    with pytest.raises(
        DataError, match=r"numeric column 'a' has 1 value\(s\) too large.*row 2: 1e\+300"
    ):
        group.transform(pa.table({"a": [1.0, 1e300, 2.0]}))


def test_infinite_numeric_values_are_refused_in_training_as_in_predict():
    # predict and the server refuse inf; a model trained with inf read as missing would be
    # asked, once served, about rows it refuses
    from hydranet.features.numeric import NumericGroup

    table = pa.table({"a": [1.0, float("inf"), 2.0, float("-inf")], "b": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(DataError, match=r"numeric column 'a' has 2 infinite value\(s\)"):
        NumericGroup("numeric", ["a", "b"]).partial_fit(table)
    group = NumericGroup("numeric", ["a"]).partial_fit(pa.table({"a": [1.0, None, 2.0]})).finish()
    with pytest.raises(DataError, match=r"numeric column 'a' has 1 infinite value"):
        group.transform(pa.table({"a": [1.0, float("inf")]}))
