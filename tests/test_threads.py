"""``train.threads = "auto"``: the chooser's measurement plan, and a run that uses it."""

from __future__ import annotations

import json

import pytest
import torch

import hydranet
from hydranet import Spec, SpecError
from hydranet.train.threads import ThreadChooser


def chooser(most: int = 4, **kw):
    calls: list[int] = []
    lines: list[str] = []
    c = ThreadChooser(most, steps=3, warmup=1, set_threads=calls.append, report=lines.append, **kw)
    return c, calls, lines


def feed(c: ThreadChooser, seconds: dict[int, list[float]]) -> None:
    """Steps while the chooser measures: each step's time is the next of its thread count's."""
    left = {n: list(t) for n, t in seconds.items()}
    while c.measuring:
        c.observe(left[c._queue[0]].pop(0))


def test_each_candidate_is_timed_after_its_warm_up_and_the_faster_median_wins():
    c, calls, lines = chooser()
    c.start_epoch()
    assert c.measuring and calls == [4]
    # the warm-up step (9.0) is not counted; 4 threads: median 2.0; 1 thread: median 3.0
    feed(c, {4: [9.0, 2.0, 1.0, 2.5], 1: [9.0, 3.0, 3.5, 2.9]})
    assert not c.measuring
    assert calls == [4, 1, 4]  # all threads, then one, then the winner
    assert c.chosen == 4 and c.end_epoch() == 4
    assert c.medians == {4: 2.0, 1: 3.0}
    assert lines == [
        "train.threads = 'auto' trains on 4 threads (a step on 4: 2000.0 ms, 1: 3000.0 ms)"
    ]


def test_one_thread_wins_when_faster_and_a_change_is_reported_once():
    c, calls, lines = chooser()
    c.start_epoch()
    feed(c, {4: [1, 5, 5, 5], 1: [1, 2, 2, 2]})
    assert c.chosen == 1 and calls[-1] == 1 and len(lines) == 1
    c.start_epoch()  # the next epoch measures again, from all threads
    assert calls[-1] == 4
    feed(c, {4: [1, 5, 5, 5], 1: [1, 2, 2, 2]})
    assert c.chosen == 1 and len(lines) == 1  # the same choice: nothing more said
    c.start_epoch()
    feed(c, {4: [1, 1, 1, 1], 1: [1, 2, 2, 2]})
    assert c.chosen == 4 and len(lines) == 2 and "on 4 threads" in lines[-1]


def test_an_epoch_too_short_to_measure_keeps_the_fastest_so_far():
    c, calls, _ = chooser()
    c.start_epoch()
    for s in (1.0, 2.0, 2.0, 2.0, 1.0, 1.0):  # all of 4 threads, then 1 thread's warm-up + 1 step
        c.observe(s)
    assert c.measuring
    # 4 threads' median 2.0; 1 thread has one timed step, 1.0: the fastest so far
    assert c.end_epoch() == 1 and c.medians == {4: 2.0, 1: 1.0} and not c.measuring
    c.start_epoch()
    for s in (1.0, 2.0):  # nothing of 1 thread timed: 4 threads stay
        c.observe(s)
    assert c.end_epoch() == 4 and c.medians == {4: 2.0}


def test_a_one_core_machine_has_nothing_to_choose():
    c, calls, lines = chooser(most=1)
    c.start_epoch()
    assert not c.measuring and calls == [] and c.end_epoch() == 1 and lines == []


def test_the_spec_takes_auto_or_a_count():
    base = {
        "data": {"train": "t.parquet", "numeric": ["a"]},
        "tasks": [{"name": "y", "kind": "binary"}],
    }
    assert Spec.from_dict({**base, "train": {"threads": "auto"}}).train.threads == "auto"
    assert Spec.from_dict({**base, "train": {"threads": 3}}).train.threads == 3
    for bad in ("fast", 0):
        with pytest.raises(SpecError, match=r"train\.threads"):
            Spec.from_dict({**base, "train": {"threads": bad}})


def test_an_auto_run_records_its_thread_count_per_epoch(tiny, tmp_path, capsys):
    before = torch.get_num_threads()
    spec = Spec.load(str(tiny(epochs=2, extra="")))
    raw = spec.to_dict()
    raw["train"]["threads"] = "auto"
    run = hydranet.train(Spec.from_dict(raw), tmp_path / "run", progress=False)
    try:
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
        candidates = {before, 1}
        for r in records:
            assert r["threads"] in candidates
            if before > 1:  # 600 rows / 64 = 10 steps an epoch: enough to time both counts
                assert set(r["step_ms"]) == {str(before), "1"}
                assert all(ms > 0 for ms in r["step_ms"].values())
        assert torch.get_num_threads() == records[-1]["threads"]
        assert run.final_metrics["epochs"] == 2
        if before > 1:
            assert "train.threads = 'auto' trains on" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
