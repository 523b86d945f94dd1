"""train.batch_size / train.epochs = "auto" (the default): chosen from the training row count,
said by `hydranet plan`, recorded in the run's spec.json, never re-decided on resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import make_table
from hydranet import rundir
from hydranet.cli import main
from hydranet.errors import SpecError
from hydranet.spec import Spec
from hydranet.train.prepare import auto_batch_size, auto_epochs, resolve_auto_sizes
from hydranet.train.trainer import setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "rows, batch, epochs",
    [
        (1, 64, 100),
        (600, 64, 100),  # tiny data: the smallest batch, every epoch short; 100 is the cap
        (10_000, 64, 51),
        (30_000, 256, 68),  # the census sample that batch 1024 under-trained
        (50_000, 512, 82),
        (199_523, 1024, 42),  # the whole census training split keeps 1024
        (1_000_000, 1024, 10),  # long epochs: never fewer than 10
    ],
)
def test_auto_sizes_for_row_counts(rows, batch, epochs):
    assert auto_batch_size(rows) == batch
    assert auto_epochs(rows, batch) == epochs


def test_an_explicit_batch_size_sets_the_steps_auto_epochs_count():
    spec = _spec_dict(train={"batch_size": 1024})
    resolved, notes = resolve_auto_sizes(Spec.from_dict(spec), 30_000)
    # 30 steps an epoch: 8000 steps would take 267 epochs, capped at 100
    assert (resolved.train.batch_size, resolved.train.epochs) == (1024, 100)
    assert len(notes) == 1 and notes[0].startswith("train.epochs auto -> 100 (30 steps an epoch")
    explicit = Spec.from_dict(_spec_dict(train={"batch_size": 32, "epochs": 2}))
    assert resolve_auto_sizes(explicit, 30_000) == (explicit, [])


def test_a_bad_value_names_the_key_and_auto():
    with pytest.raises(SpecError) as e:
        Spec.from_dict(_spec_dict(train={"batch_size": 0, "epochs": "many"}))
    assert e.value.problems == [
        ("train.epochs", "Input should be a valid integer or 'auto' (got 'many')"),
        ("train.batch_size", "Input should be greater than or equal to 1 or 'auto' (got 0)"),
    ]


def test_plan_says_what_auto_chose_and_why(tiny, capsys):
    path = _auto_spec(tiny, early_stopping=True)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  train.batch_size auto -> 64 (600 training rows)\n" in out
    assert (
        "  train.epochs auto -> 100 (10 steps an epoch of 64; about 8,000 steps in all, "
        "within 10-100 epochs, a cap: early stopping is on)\n" in out
    )
    resolved = json.loads(out.split("# resolved spec\n")[1].split("\n\n")[0])
    assert (resolved["train"]["batch_size"], resolved["train"]["epochs"]) == (64, 100)


def test_plan_of_a_streamed_split_counts_its_rows(tiny, capsys):
    path = _auto_spec(tiny)
    assert main(["plan", str(path), "--set", "data.streaming=true"]) == 0
    assert "train.batch_size auto -> 64 (600 training rows)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "given, expected",
    [
        (["train.batch_size=32", "train.epochs=2"], (32, 2, [])),
        (["train.batch_size=32"], (32, 100, ["train.epochs auto -> 100"])),
        (["train.epochs=2"], (64, 2, ["train.batch_size auto -> 64"])),
    ],
)
def test_set_of_either_wins_over_auto(tiny, capsys, given, expected):
    path = _auto_spec(tiny)
    assert main(["plan", str(path), *(a for g in given for a in ("--set", g))]) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out.split("# resolved spec\n")[1].split("\n\n")[0])
    chosen = out.split("# chosen\n")[1].split("\n\n")[0].splitlines() if "# chosen" in out else []
    batch, epochs, lines = expected
    assert (resolved["train"]["batch_size"], resolved["train"]["epochs"]) == (batch, epochs)
    assert [c.strip().split(" (")[0] for c in chosen] == lines


def test_an_explicit_value_in_the_spec_wins_and_set_auto_brings_the_rule_back(tiny, capsys):
    path = tiny(epochs=2)  # batch_size = 64, epochs = 2 in the file
    assert main(["plan", str(path)]) == 0
    assert "# chosen" not in capsys.readouterr().out
    assert main(["plan", str(path), "--set", "train.epochs=auto"]) == 0
    assert "  train.epochs auto -> 100 (10 steps an epoch of 64;" in capsys.readouterr().out


def test_the_chosen_numbers_are_recorded_and_a_resume_keeps_them(tiny, tmp_path, capsys):
    path = _auto_spec(tiny, checkpoint_every=2)
    out = tmp_path / "run"
    setup(path, out, progress=False).fit(stop_after_steps=3)  # a crash after a checkpoint
    assert "hydranet: train.batch_size auto -> 64 (600 training rows)" in capsys.readouterr().err
    recorded = rundir.read_json(out / rundir.SPEC)["train"]
    assert (recorded["batch_size"], recorded["epochs"]) == (64, 100)
    # 20,000 training rows now: auto would choose 128 and 51; the run keeps what it started with
    pq.write_table(make_table(20_000, seed=0), tiny.paths["train"])
    assert auto_batch_size(20_000) == 128
    trainer = setup(path, out, resume=True, progress=False)
    assert (trainer.cfg.batch_size, trainer.cfg.epochs) == (64, 100)
    err = capsys.readouterr().err
    assert "changed on resume" not in err and "auto ->" not in err
    assert rundir.read_json(out / rundir.SPEC)["train"] == recorded


# ---------------------------------------------------------------- helpers
def _spec_dict(train: dict) -> dict:
    return {
        "data": {"train": "t.parquet", "numeric": ["a"]},
        "tasks": [{"name": "y", "kind": "binary"}],
        "train": train,
    }


def _auto_spec(tiny, early_stopping: bool = False, checkpoint_every: int = 0):
    """The tiny spec (600 training rows) without train.batch_size and train.epochs."""
    extra = 'early_stopping = { metric = "click.auc", patience = 2 }\n' if early_stopping else ""
    path = tiny(epochs=1, checkpoint_every=checkpoint_every, extra=extra)
    lines = path.read_text().splitlines(keepends=True)
    kept = [x for x in lines if not x.startswith(("epochs = ", "batch_size = "))]
    assert len(kept) == len(lines) - 2
    path.write_text("".join(kept))
    return path
