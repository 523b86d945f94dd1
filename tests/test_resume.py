"""Resume and restart: a finished run is left alone, a changed spec is refused but for the
keys a resume may change, a run that never checkpointed restarts in place, data paths mean
the spec file's directory, and the lines that say what happened (resuming, SIGTERM)."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import hydranet
from hydranet import rundir
from hydranet.cli import main
from hydranet.spec import Spec
from hydranet.train.trainer import setup
from tests_helpers import hydranet_on_read_only_mount, read_only_mount_works

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hydranet: error:"), err
    return lines[0]


def _stopped_mid_run(spec_path: Path, out: Path, steps: int) -> None:
    """A run stopped after ``steps`` steps (its checkpoints every ``checkpoint_every``)."""
    setup(spec_path, out, progress=False).fit(stop_after_steps=steps)


# ---------------------------------------------------------------- a finished run
def test_resume_of_a_finished_run_writes_nothing(tiny, tmp_path, capsys):
    spec = tiny(epochs=2)
    out = tmp_path / "run"
    assert _cli(capsys, "train", spec, "--out", out, "--no-progress")[0] == 0
    before = _snapshot(out)
    code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert f"{out} is finished (2 epochs, 20 steps); nothing to do" in err
    assert _snapshot(out) == before


def test_more_epochs_continue_a_finished_run_as_one_longer_run(tiny, tmp_path, capsys):
    """A constant schedule: 2 epochs, then --resume --set train.epochs=4, ends exactly where
    4 epochs in one go end; spec.json says 4, and the old finish markers were replaced."""
    spec = tiny(epochs=2)
    out = tmp_path / "run"
    assert _cli(capsys, "train", spec, "--out", out, "--no-progress")[0] == 0
    stale = '{"stale": true}\n'
    (out / rundir.MANIFEST).write_text(stale)
    code, _, err = _cli(
        capsys, "train", spec, "--out", out, "--resume", "--set", "train.epochs=4", "--no-progress"
    )
    assert code == 0, err
    assert "changed on resume: train.epochs 2 -> 4" in err
    assert f"resuming {out} at epoch 2, step 20" in err
    assert "schedule" not in err  # constant: the rate does not move
    straight = tmp_path / "straight"
    assert _cli(capsys, "train", tiny(epochs=4), "--out", straight, "--no-progress")[0] == 0

    assert rundir.read_json(out / rundir.FINAL) == rundir.read_json(straight / rundir.FINAL)
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3, 4]
    assert rundir.read_json(out / rundir.SPEC)["train"]["epochs"] == 4
    manifest = out / rundir.MANIFEST
    assert not manifest.exists() or manifest.read_text() != stale
    # and now it is finished at 4
    before = _snapshot(out)
    code, _, err = _cli(capsys, "train", tiny(epochs=4), "--out", out, "--resume")
    assert code == 0 and "is finished (4 epochs, 40 steps); nothing to do" in err
    assert _snapshot(out) == before


def test_more_epochs_stretch_a_cosine_schedule_and_say_so(tiny, tmp_path, capsys):
    spec = tiny(epochs=2, extra='[train.schedule]\nkind = "cosine"\n')
    out = tmp_path / "run"
    assert _cli(capsys, "train", spec, "--out", out, "--no-progress")[0] == 0
    code, _, err = _cli(
        capsys, "train", spec, "--out", out, "--resume", "--set", "train.epochs=4", "--no-progress"
    )
    assert code == 0, err
    # at the end of the 2-epoch cosine the rate was 0; it is the 4-epoch cosine's now
    assert (
        "the cosine schedule now spans 4 epochs, not 2: the learning rate goes from 0 to 0.005 at step 20"
        in err
    )
    lrs = [r["lr"] for r in rundir.read_metrics(out)]
    assert (
        lrs[1] == pytest.approx(0.0, abs=1e-12)
        and lrs[2] > 1e-3
        and lrs[3] == pytest.approx(0.0, abs=1e-12)
    )


def test_fewer_epochs_than_trained_is_refused(tiny, tmp_path, capsys):
    spec = tiny(epochs=3)
    out = tmp_path / "run"
    assert _cli(capsys, "train", spec, "--out", out, "--no-progress")[0] == 0
    before = _snapshot(out)
    code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume", "--set", "train.epochs=2")
    assert code == 2
    assert "train.epochs = 2: it has trained 3 epochs already" in _one_error_line(err)
    assert _snapshot(out) == before


# ---------------------------------------------------------------- a changed spec
def test_resume_refuses_a_spec_that_differs_but_in_resumable_keys(tiny, tmp_path, capsys):
    spec = tiny(epochs=2, checkpoint_every=4)
    out = tmp_path / "run"
    _stopped_mid_run(spec, out, steps=6)  # checkpoint at step 4
    before = _snapshot(out)

    other = tiny(epochs=2, checkpoint_every=4, name="other.toml")
    other.write_text(
        other.read_text().replace("lr = 0.01", "lr = 0.1").replace("tower = [8]", "tower = [16]")
    )
    code, _, err = _cli(capsys, "train", other, "--out", out, "--resume")
    assert code == 2
    line = _one_error_line(err)
    assert f"train.lr: 0.01 in the run, 0.1 in {other}" in line
    assert f"model.tower[0]: 8 in the run, 16 in {other}" in line
    assert "only train.epochs" in line
    assert _snapshot(out) == before

    code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume", "--set", "train.lr=0.1")
    assert code == 2 and f"train.lr: 0.01 in the run, 0.1 in {spec}" in _one_error_line(err)
    assert _snapshot(out) == before

    # keys a resume may change: allowed, recorded in spec.json
    code, _, err = _cli(
        capsys,
        "train",
        spec,
        "--out",
        out,
        "--resume",
        "--set",
        "train.checkpoint_every=3",
        "--no-progress",
    )
    assert code == 0, err
    assert "changed on resume: train.checkpoint_every 4 -> 3" in err
    assert f"resuming {out} at epoch 1, step 4" in err
    assert rundir.read_json(out / rundir.SPEC)["train"]["checkpoint_every"] == 3


def test_resume_with_a_corrupt_spec_json_names_it(tiny, tmp_path, capsys):
    spec = tiny(epochs=2, checkpoint_every=4)
    out = tmp_path / "run"
    _stopped_mid_run(spec, out, steps=6)
    (out / rundir.SPEC).write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume")
    assert code == 2
    assert f"{out / rundir.SPEC} is not valid JSON" in _one_error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_resume_of_a_read_only_run_writes_nothing(tiny, tmp_path, capsys):
    spec = tiny(epochs=2, checkpoint_every=4)
    out = tmp_path / "run"
    _stopped_mid_run(spec, out, steps=6)
    before = _snapshot(out)
    out.chmod(0o555)
    try:
        code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume")
    finally:
        out.chmod(0o755)
    assert code == 2
    assert f"run directory {out} is not writable" in _one_error_line(err)
    assert _snapshot(out) == before


def test_resume_on_a_read_only_file_system_writes_nothing(tiny, tmp_path):
    # as root (where the chmod test above is skipped): a read-only bind mount gives EROFS
    spec = tiny(epochs=2, checkpoint_every=4)
    out, mnt = tmp_path / "run", tmp_path / "mnt"
    _stopped_mid_run(spec, out, steps=6)
    mnt.mkdir()
    if not read_only_mount_works(out, mnt):
        pytest.skip("needs root and a mount namespace (unshare) for a read-only bind mount")
    before = _snapshot(out)
    res = hydranet_on_read_only_mount(out, mnt, ["train", str(spec), "--out", str(mnt), "--resume"])
    assert res.returncode == 2, res.stderr
    assert f"run directory {mnt} is not writable" in _one_error_line(res.stderr)
    assert _snapshot(out) == before


# ---------------------------------------------------------------- before the first checkpoint
def test_a_run_that_diverged_before_its_first_checkpoint_restarts_in_place(tiny, tmp_path, capsys):
    spec = tiny(epochs=2)
    out = tmp_path / "run"
    code, _, err = _cli(
        capsys, "train", spec, "--out", out, "--set", "train.lr=1e12", "--no-progress"
    )
    assert code == 2
    line = _one_error_line(err)
    assert "no checkpoint was written" in line and "last good checkpoint" not in line
    assert f"`hydranet train {spec} --out {out}` starts it afresh" in line
    assert (out / rundir.SPEC).exists() and not (out / rundir.CHECKPOINT).exists()

    code, _, err = _cli(capsys, "train", spec, "--out", out, "--resume")
    assert code == 2
    line = _one_error_line(err)
    assert "stopped before its first checkpoint" in line
    assert f"`hydranet train {spec} --out {out}` (without --resume)" in line

    # the command both messages suggest
    code, _, err = _cli(capsys, "train", spec, "--out", out, "--no-progress")
    assert code == 0, err
    assert f"{out} holds a run that stopped before its first checkpoint; starting it afresh" in err
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2]
    assert rundir.read_json(out / rundir.SPEC)["train"]["lr"] == 0.01


def test_a_run_directory_with_a_checkpoint_or_other_files_is_not_restarted(tiny, tmp_path, capsys):
    spec = tiny(epochs=2, checkpoint_every=4)
    out = tmp_path / "run"
    _stopped_mid_run(spec, out, steps=6)
    code, _, err = _cli(capsys, "train", spec, "--out", out)
    assert code == 2 and "already holds a run; pass --resume" in _one_error_line(err)

    (out / rundir.CHECKPOINT).unlink()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    code, _, err = _cli(capsys, "train", spec, "--out", out)
    assert code == 2 and "already holds a run" in _one_error_line(err)
    assert _snapshot(out) == before


# ---------------------------------------------------------------- data paths
def test_relative_data_paths_mean_the_spec_files_directory(tiny, tmp_path, capsys, monkeypatch):
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for d in (a / "data", b, c):
        d.mkdir(parents=True)
    for split, path in tiny.paths.items():
        path.rename(a / "data" / f"{split}.parquet")
    text = tiny(epochs=1).read_text()
    for split in tiny.paths:
        text = text.replace(str(tiny.paths[split]), f"data/{split}.parquet")
    (a / "spec.toml").write_text(text)

    monkeypatch.chdir(b)
    code, _, err = _cli(capsys, "train", "../a/spec.toml", "--out", "run", "--no-progress")
    assert code == 0, err
    stored = rundir.read_json(b / "run" / rundir.SPEC)["data"]
    assert Path(stored["train"]).is_absolute()
    assert Path(stored["train"]).resolve() == (a / "data" / "train.parquet").resolve()

    monkeypatch.chdir(c)
    code, out, err = _cli(capsys, "evaluate", b / "run", "--json")
    assert code == 0, err
    assert set(json.loads(out)) == {"click", "value", "kind"}

    # a path given with --set was typed in the current directory, and means it
    code, _, err = _cli(
        capsys,
        "train",
        a / "spec.toml",
        "--out",
        "run2",
        "--set",
        'data.test="../a/data/test.parquet"',
        "--no-progress",
    )
    assert code == 0, err
    assert (
        Path(rundir.read_json(c / "run2" / rundir.SPEC)["data"]["test"]).resolve()
        == (a / "data" / "test.parquet").resolve()
    )


def test_relative_data_paths_of_a_python_spec_mean_the_current_directory(
    tiny, tmp_path, monkeypatch
):
    raw = Spec.load(tiny(epochs=1)).to_dict()
    raw["data"]["train"] = "train.parquet"
    monkeypatch.chdir(tmp_path)  # where the tiny files are
    run = hydranet.train(Spec.from_dict(raw), tmp_path / "run", progress=False)
    assert run.spec.data.train == str(tmp_path / "train.parquet")


# ---------------------------------------------------------------- lines: resuming, SIGTERM
@pytest.mark.parametrize("checkpoint_every", [4, 0])
def test_sigterm_says_what_is_kept_and_exits_143(tiny, tmp_path, checkpoint_every):
    from conftest import make_table
    from held_trunk import ARCHITECTURE, hold_env, train_cmd, wait_until_held

    pq.write_table(make_table(600, seed=0), tiny.paths["train"])
    spec = tiny(arch=ARCHITECTURE, epochs=2, checkpoint_every=checkpoint_every)
    out = tmp_path / "run"
    # held in step 7: with checkpoint_every = 4 the checkpoint of step 4 is on disk
    proc = subprocess.Popen(
        train_cmd(spec, out),
        env=hold_env(tmp_path, after_steps=6),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_held(tmp_path, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    command = f"hydranet train {spec} --out {out}"
    if checkpoint_every:
        assert last == (
            f"hydranet: stopped by SIGTERM; the last checkpoint (epoch 1, step 4) is kept: "
            f"resume with `{command} --resume`"
        )
        res = subprocess.run(
            train_cmd(spec, out, "--resume"),
            env=hold_env(tmp_path),
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        assert f"hydranet: resuming {out} at epoch 1, step 4" in res.stderr
    else:
        assert (
            last
            == f"hydranet: stopped by SIGTERM; no checkpoint was written: `{command}` starts it afresh"
        )


def test_shard_encoders_may_change_on_resume(tiny, tmp_path, capsys):
    """Checkpoints hold every tensor whole (a sharded encoder's are gathered on save), so a
    resume may shard other encoders, or none."""
    spec = tiny(epochs=2, checkpoint_every=4)
    out = tmp_path / "run"
    _stopped_mid_run(spec, out, steps=6)
    code, _, err = _cli(
        capsys,
        "train",
        spec,
        "--out",
        out,
        "--resume",
        "--set",
        'train.shard_encoders=["numeric"]',
        "--no-progress",
    )
    assert code == 0, err
    assert 'changed on resume: train.shard_encoders [] -> ["numeric"]' in err
    assert rundir.read_json(out / rundir.SPEC)["train"]["shard_encoders"] == ["numeric"]
