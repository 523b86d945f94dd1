"""Out-of-core training data: streaming fit, the streaming loader, resume, the spec switch."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet import Spec, rundir
from hydranet.data.preprocess import Preprocessor
from hydranet.data.sources import iter_batches
from hydranet.data.stream import StreamingSplit, fit_streaming
from hydranet.errors import SpecError
from hydranet.tasks import build_task
from hydranet.train.trainer import setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _streaming(tiny, rows: int = 1000, row_group: int = 97, **data) -> Spec:
    """The tiny spec with streaming on, over a train file cut into small row groups."""
    from conftest import make_table

    pq.write_table(
        make_table(rows, seed=0, missing_frac=0.2), tiny.paths["train"], row_group_size=row_group
    )
    spec = Spec.load(tiny(epochs=2))
    options = {"streaming": True, "shuffle_buffer_rows": 300, "chunk_rows": 50, **data}
    return spec.model_copy(update={"data": spec.data.model_copy(update=options)})


def test_streaming_fit_equals_the_in_memory_fit(tiny):
    spec = _streaming(tiny)
    table = pq.read_table(tiny.paths["train"])
    cols = ["a", "b", "c", "color", "size", "click", "value", "kind"]

    whole = Preprocessor.tabular(["a", "b", "c"], ["color", "size"]).fit(table)
    tasks_whole = [build_task(ts).fit(table) for ts in spec.tasks]
    streamed = Preprocessor.tabular(["a", "b", "c"], ["color", "size"])
    tasks_streamed = [build_task(ts) for ts in spec.tasks]
    rows = fit_streaming(
        streamed,
        tasks_streamed,
        iter_batches(str(tiny.paths["train"]), columns=cols, batch_rows=37),
    )

    assert rows == table.num_rows
    (ac, an), (bc, bn) = ([g["fitted"] for g in p.to_dict()["groups"]] for p in (whole, streamed))
    assert ac["vocabularies_"] == bc["vocabularies_"]
    assert an["missing_indicator_"] == bn["missing_indicator_"]
    np.testing.assert_allclose(an["mean_"], bn["mean_"], rtol=1e-12)
    np.testing.assert_allclose(an["scale_"], bn["scale_"], rtol=1e-12)
    for tw, ts in zip(tasks_whole, tasks_streamed, strict=True):
        assert tw.state.keys() == ts.state.keys()
        for k, v in tw.state.items():
            assert ts.state[k] == (pytest.approx(v, rel=1e-12) if isinstance(v, float) else v), (
                tw.name,
                k,
            )


def _loader(spec: Spec, **kw):
    from hydranet.train.prepare import prepare

    tasks, prep, splits = prepare(spec)
    train = splits["train"]
    assert isinstance(train, StreamingSplit)
    return train, train.loader(spec.train.batch_size, seed=0, **kw)


def test_streaming_loader_yields_every_row_once_per_epoch_in_a_seeded_order(tiny):
    spec = _streaming(tiny)
    train, loader = _loader(spec)
    assert len(train.pieces) == 11  # 1000 rows in row groups of 97
    in_file_order = train.preprocessor.transform(pq.read_table(tiny.paths["train"]))["numeric"][
        :, 0
    ].numpy()
    full = np.sort(in_file_order)

    def epoch(e):
        loader.set_epoch(e)
        batches = list(loader)
        assert len(batches) == len(loader) == 16  # ceil(1000 / 64)
        assert all(b.size == 64 for b in batches[:-1]) and batches[-1].size == 1000 - 15 * 64
        return torch.cat([b.features["numeric"][:, 0] for b in batches]).numpy()

    e0, e1, e0_again = epoch(0), epoch(1), epoch(0)
    np.testing.assert_array_equal(np.sort(e0), full)
    np.testing.assert_array_equal(e0, e0_again)
    assert not np.array_equal(e0, e1)
    # the buffer mixes row groups: a batch holds rows of several of them
    row_group = {float(v): i // 97 for i, v in enumerate(in_file_order)}
    assert len({row_group[float(v)] for v in e0[:64]}) >= 3


def test_rank_slices_of_a_streamed_batch_make_the_global_batch(tiny):
    spec = _streaming(tiny)
    _, whole = _loader(spec)
    _, r0 = _loader(spec, rank=0, world_size=2)
    _, r1 = _loader(spec, rank=1, world_size=2)
    for g, a, b in zip(whole, r0, r1, strict=True):
        for k in g.features:
            torch.testing.assert_close(torch.cat([a.features[k], b.features[k]]), g.features[k])
        assert a.size - b.size in (0, 1)


def test_streamed_training_resumes_exactly_mid_epoch(tiny, tmp_path):
    spec = _streaming(tiny)
    spec.train.checkpoint_every = 5
    whole = setup(spec, tmp_path / "whole", progress=False)
    whole.fit()
    part = setup(spec, tmp_path / "part", progress=False)
    part.fit(stop_after_steps=20)  # the second epoch's 4th batch; checkpoint at step 20
    resumed = setup(spec, tmp_path / "part", resume=True, progress=False)
    resumed.fit()
    a = json.loads((tmp_path / "whole" / rundir.FINAL).read_text())
    b = json.loads((tmp_path / "part" / rundir.FINAL).read_text())
    assert a == b
    assert a["steps"] == 32


def test_streamed_training_learns(tiny, tmp_path):
    spec = _streaming(tiny, rows=2000, row_group=400, chunk_rows=200, shuffle_buffer_rows=800)
    spec.train.epochs = 3
    run = hydranet.train(spec, tmp_path / "run", progress=False)
    assert run.final_metrics["test"]["click"]["auc"] > 0.75
    assert json.loads((run.path / rundir.SPEC).read_text())["data"]["streaming"] is True


def test_streaming_refuses_carved_splits(tiny, tmp_path):
    spec = _streaming(tiny, validation=None, validation_fraction=0.1)
    with pytest.raises(SpecError, match="validation_fraction"):
        hydranet.train(spec, tmp_path / "run", progress=False)


def test_streaming_reports_bad_labels_with_the_column(tiny, tmp_path):
    from hydranet.errors import DataError

    spec = _streaming(tiny)
    table = pq.read_table(tiny.paths["train"])
    bad = table.set_column(
        table.column_names.index("click"), "click", pa.array([2] * table.num_rows, pa.int64())
    )
    pq.write_table(bad, tiny.paths["train"], row_group_size=97)
    with pytest.raises(DataError, match="'click'"):
        hydranet.train(spec, tmp_path / "run", progress=False)


def test_plan_summarizes_a_streamed_split(tiny):
    from hydranet.train.plan import plan

    text = plan(_streaming(tiny))
    assert "streamed from" in text and "1,000 rows" in text
