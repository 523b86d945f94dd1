"""hydranet tune: a study of tiny trials (1-3 epochs on the 600-row table, 2-3 trials)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

pytest.importorskip("optuna", reason="hydranet tune needs Optuna: pip install 'hydranet[tune]'")

from hydranet.errors import UserError  # noqa: E402
from hydranet.run import Run  # noqa: E402
from hydranet.spec import Spec  # noqa: E402
from hydranet.tune import tune  # noqa: E402
from hydranet.tune.objective import resolve_metric  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TUNE = """
[tune]
sampler = "random"
heartbeat_s = 1
{options}
[tune.space]
{space}
"""

SPACE = """\
"train.lr" = {low = 3e-3, high = 3e-2, log = true}
model.params.num_experts = {low = 2, high = 3}
"model.tower" = [[8], [16, 8]]
"""


def _spec(tiny, space=SPACE, options="", epochs=1, arch="mmoe", name="spec.toml"):
    return tiny(
        arch=arch, epochs=epochs, extra=TUNE.format(space=space, options=options), name=name
    )


def _table(out) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def _cli(*args, env=None, check=True):
    res = subprocess.run(
        [sys.executable, "-m", "hydranet", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_study_completes_and_best_is_a_run_with_the_best_value(tiny, tmp_path):
    out = tmp_path / "study"
    lines: list[str] = []
    spec = _spec(tiny)
    best = tune(spec, out, 3, echo=lines.append)

    rows = _table(out)
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert best.value == pytest.approx(max(float(r["value"]) for r in rows), rel=1e-5)
    assert best.path == out / "best"
    run = Run.load(out / "best")  # evaluate/predict/serve load it like any run
    assert run.spec.tune is None  # a trial's spec is the base spec with the trial's values
    assert run.spec.train.lr == best.params["train.lr"]
    assert run.spec.model.tower == best.params["model.tower"]  # a list choice, decoded
    metric = resolve_metric(Spec.load(spec))
    assert metric.value(run.final_metrics["validation"]) == pytest.approx(best.value)
    assert json.loads((out / "best.json").read_text())["number"] == best.number
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "trial 1/3 done",
        "trial 2/3 done",
        "trial 3/3 done",
    ]
    assert "left" in lines[0] and "left" not in lines[2]
    assert (out / "optimization_history.png").stat().st_size > 0
    assert (out / "param_importances.png").stat().st_size > 0


def test_a_second_invocation_adds_trials_up_to_the_total(tiny, tmp_path):
    spec = _spec(tiny)
    out = tmp_path / "study"
    tune(spec, out, 2, echo=lambda line: None)
    res = _cli("tune", spec, "--trials", 3, "--out", out)
    assert len(_table(out)) == 3
    assert "trial 3/3 done (trials/2)" in res.stderr
    assert json.loads(res.stdout)["run"] == str(out / "best")
    # the total is reached: nothing more to run
    tune(spec, out, 3, echo=lambda line: None)
    assert len(_table(out)) == 3

    # the study belongs to its spec: another one (here with --set) is refused, in one line
    res = _cli("tune", spec, "--trials", 4, "--out", out, "--set", "train.epochs=2", check=False)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "holds a study of another spec (they differ at train.epochs)" in res.stderr


def test_two_workers_share_one_study(tiny, tmp_path):
    spec, out = _spec(tiny), tmp_path / "study"
    cmd = [sys.executable, "-m", "hydranet", "tune", str(spec), "--trials", "3", "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(*p.communicate(), p.returncode) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0], [err for _, err, _ in results]
    rows = _table(out)
    # the total is the study's, not each worker's (one worker may get one trial or none on a
    # busy machine, so which ran what is not asserted)
    assert [r["state"] for r in rows].count("complete") == 3
    assert all(r["worker"] for r in rows if r["state"] == "complete")
    # both return when the study is done, with the same best
    assert json.loads(results[0][0])["best_trial"] == json.loads(results[1][0])["best_trial"]


def test_a_pruned_trial_stops_after_its_first_epoch_and_leaves_a_whole_run(tiny, tmp_path):
    # trial 0 learns (lr 0.02); trial 1 cannot (lr 1e-7), and the median pruner, allowed to
    # prune after one finished trial from the first epoch on, stops it there
    options = (
        "pruner_startup_trials = 1\npruner_warmup_epochs = 0\n"
        'enqueue = [{"train.lr" = 0.02}, {"train.lr" = 1e-7}]'
    )
    out = tmp_path / "study"
    lines: list[str] = []
    tune(
        _spec(tiny, '"train.lr" = {low = 1e-7, high = 0.05, log = true}\n', options, epochs=3),
        out,
        2,
        echo=lines.append,
    )
    rows = _table(out)
    assert [(r["state"], r["epochs"]) for r in rows] == [("complete", "3"), ("pruned", "1")]
    assert float(rows[1]["train.lr"]) == pytest.approx(1e-7)
    assert lines[1].startswith("trial 2/2 pruned after epoch 1 (trials/1)")
    pruned = out / "trials" / "1"
    assert json.loads((pruned / "trial.json").read_text())["state"] == "pruned"
    final = json.loads((pruned / "final_metrics.json").read_text())
    assert final["epochs"] == 1
    Run.load(pruned)  # weights and final metrics written: a complete run directory
    assert (out / "best").resolve() == (out / "trials" / "0").resolve()


def test_a_study_whose_worker_was_killed_resumes_and_finishes(tiny, tmp_path):
    """kill -9 of a worker held in its first trial's training (see held_trunk); the next
    invocation fails the trial once its heartbeat is stale, runs its parameters again, and
    finishes the study."""
    from held_trunk import ARCHITECTURE, kill_when_held

    spec = _spec(tiny, arch=ARCHITECTURE)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "hydranet", "tune", str(spec), "--trials", "2", "--out", str(out)]
    kill_when_held(cmd, tmp_path, after_steps=3)
    assert not (out / "trials" / "0" / "model.safetensors").exists()

    lines: list[str] = []
    best = tune(spec, out, 2, echo=lines.append)
    rows = _table(out)
    states = [r["state"] for r in rows]
    assert states.count("complete") == 2 and states[0] == "fail", rows
    retried = next(r for r in rows if r["note"] == "retry of trial 0")
    assert {k: retried[k] for k in ("train.lr", "model.tower")} == {
        k: rows[0][k] for k in ("train.lr", "model.tower")
    }
    Run.load(best.path)


@pytest.mark.parametrize(
    ("space", "options", "message"),
    [
        ('"train.lrr" = [0.1]\n', "", "tune.space.train.lrr: 0.1: train.lrr: unknown key"),
        (
            '"model.architecture" = ["mmoe", "nope"]\n',
            "",
            "tune.space.model.architecture: 'nope': model.architecture: unknown",
        ),
        ('"train.lr" = {low = 0.1, high = 0.01}\n', "", "train.lr: low (0.1) is above high"),
        ('"train.lr" = {low = 0.0, high = 0.01, log = true}\n', "", "a log range needs low > 0"),
        ('"train.lr" = 0.1\n', "", "train.lr: expected {low, high}"),
        (
            '"train.lr" = [0.1]\n',
            'metric = "click.rmse"',
            "tune.metric: unknown metric 'click.rmse'",
        ),
        ('"train.lr" = [0.1]\n', 'enqueue = [{"train.momentum" = 0.5}]', "tune.enqueue[0]"),
        ('"train.lr" = [0.1]\n', 'enqueue = [{"train.lr" = 0.5}]', "is not one of the choices"),
    ],
)
def test_bad_tune_sections_are_one_line_errors(tiny, tmp_path, space, options, message):
    with pytest.raises(UserError) as e:
        tune(_spec(tiny, space, options), tmp_path / "study", 1, echo=lambda line: None)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "study").exists()  # refused before anything is written


def test_cli_tune_errors_are_one_line_without_traceback(tiny, tmp_path):
    res = _cli(
        "tune",
        _spec(tiny, '"trian.lr" = [0.1]\n'),
        "--trials",
        2,
        "--out",
        tmp_path / "s",
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("hydranet: error:") and res.stderr.count("\n") == 1
    assert "tune.space.trian.lr" in res.stderr
    # each value is valid alone, the two together are not: the first trial fails, in one line
    together = '"model.architecture" = ["shared_bottom"]\n"model.params.num_experts" = [2]\n'
    res = _cli("tune", _spec(tiny, together), "--trials", 2, "--out", tmp_path / "t", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "trial 0: model.params.num_experts: unknown parameter of 'shared_bottom'" in res.stderr
    res = _cli("tune", tiny(), "--trials", 2, "--out", tmp_path / "s", check=False)
    assert res.returncode == 2 and "has no [tune] section" in res.stderr
    assert "Traceback" not in res.stderr


def test_space_keys_nest_or_quote_alike(tiny):
    nested = Spec.load(_spec(tiny, "train.lr = {low = 0.001, high = 0.01}\n", name="a.toml"))
    quoted = Spec.load(_spec(tiny, '"train.lr" = {low = 0.001, high = 0.01}\n', name="b.toml"))
    assert nested.tune == quoted.tune
    assert list(nested.tune.space) == ["train.lr"]


def test_the_census_tune_example_is_a_valid_search():
    from hydranet.tune import space
    from tests_helpers import ROOT

    spec = Spec.load(ROOT / "examples" / "census_tune.toml")
    space.check(spec)
    assert resolve_metric(spec).parts == (("income", "auc"), ("marital", "auc"))
