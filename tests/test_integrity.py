"""Run integrity: the manifest, checksummed checkpoints, garbage run files, read-only runs.

One tiny run is trained (and exported into itself) once for the module; each test
damages a copy of it and checks that every command that loads a run refuses it with
one line naming the damaged file, exit 2, and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hydranet import rundir
from hydranet.cli import main
from hydranet.errors import UserError
from hydranet.run import Run
from hydranet.train.state_io import atomic_save_tensors, load_state, load_tensors, save_state
from tests_helpers import hydranet_on_read_only_mount, read_only_mount_works

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_ONNX = all(
    __import__("importlib").util.find_spec(m) is not None for m in ("onnx", "onnxruntime")
)
META_FILES = (rundir.SPEC, rundir.PREPROCESSOR, rundir.TASKS, rundir.ENCODERS)
GARBAGE = {
    "not-utf8": b"\xff\xfe\x00garbage\x80\x81",
    "not-json": b"{spec: this is not json",
    "array": b"[]",
    "wrong-object": b'{"x": 1}',
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    from conftest import SPEC_TEMPLATE, make_table

    base = tmp_path_factory.mktemp("integrity")
    paths = {}
    for i, (split, n) in enumerate([("train", 600), ("validation", 200), ("test", 200)]):
        paths[split] = base / f"{split}.parquet"
        pq.write_table(make_table(n, seed=i), paths[split])
    spec = base / "spec.toml"
    spec.write_text(
        SPEC_TEMPLATE.format(
            arch="mmoe", epochs=2, checkpoint_every=0, **{k: str(v) for k, v in paths.items()}
        )
        + '\n[train.early_stopping]\nmetric = "loss"\npatience = 5\n'
    )
    run = base / "run"
    assert main(["train", str(spec), "--out", str(run), "--no-progress"]) == 0
    if HAS_ONNX:
        assert main(["export", str(run)]) == 0  # into the run: the manifest takes it in
    return {"spec": spec, "run": run, "test": paths["test"]}


def _copy(trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained["run"], tmp_path / "run"))


def _flip(path: Path, n: int = 8) -> None:
    """Inverts ``n`` bytes in the middle of the file's data (past a safetensors header)."""
    data = bytearray(path.read_bytes())
    start = 0
    if path.suffix == ".safetensors":
        start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    mid = start + (len(data) - start) // 2
    for i in range(mid, min(mid + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def _loaders(trained, tmp_path: Path):
    """The argv of every CLI command that loads a finished run (serve: see Predictor.load)."""
    out = tmp_path / "outputs"
    out.mkdir(exist_ok=True)
    yield ["evaluate", "{run}"]
    yield ["predict", "{run}", trained["test"], "--output", out / "p.parquet"]
    if HAS_ONNX:
        yield ["export", "{run}", "--onnx", out / "m.onnx"]


def _refused_everywhere(
    capsys, trained, tmp_path, run: Path, *needles: str, onnx_reads: bool = True
) -> None:
    """``onnx_reads``: the damaged file is one the onnxruntime backend reads."""
    from hydranet.serve.predictor import Predictor

    for argv in _loaders(trained, tmp_path):
        code, _, err = _cli(capsys, *[str(a).format(run=run) for a in argv])
        _one_line(code, err, *needles)
    assert not any((tmp_path / "outputs").iterdir())  # nothing written
    for backend in ("torch", "onnxruntime") if HAS_ONNX and onnx_reads else ("torch",):
        with pytest.raises(UserError) as e:
            Predictor.load(run, backend)  # what `serve` and batch predict call
        assert all(n in str(e.value) for n in needles) and "\n" not in str(e.value)


# ---------------------------------------------------------------- manifest
def test_manifest_lists_every_run_file_but_the_checkpoint(trained):
    run = trained["run"]
    manifest = json.loads((run / rundir.MANIFEST).read_text())
    files = manifest["files"]
    expected = {p.name for p in run.iterdir() if p.name not in (rundir.MANIFEST, rundir.CHECKPOINT)}
    assert set(files) == expected
    assert {rundir.WEIGHTS, rundir.BEST, rundir.SPEC, rundir.FINAL, rundir.METRICS} <= expected
    assert (run / rundir.CHECKPOINT).is_file()
    if HAS_ONNX:
        assert "model.onnx" in files  # the export updated it
    for name, entry in files.items():
        assert entry == {
            "sha256": rundir.file_digest(run / name),
            "bytes": (run / name).stat().st_size,
        }
    rundir.verify_run(run)


def test_flipped_weights_are_refused_by_every_loader(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _flip(run / rundir.WEIGHTS)
    _refused_everywhere(
        capsys,
        trained,
        tmp_path,
        run,
        "model.safetensors",
        "does not match the run's manifest",
        onnx_reads=False,  # which serves on (test_onnx_backend_checks_model_onnx...)
    )


def test_flipped_weights_without_manifest_are_refused_by_their_checksum(trained, tmp_path, capsys):
    # a run whose manifest is lost still has the checksum inside the safetensors file
    run = _copy(trained, tmp_path)
    (run / rundir.MANIFEST).unlink()
    _flip(run / rundir.WEIGHTS)
    code, _, err = _cli(capsys, "evaluate", run)
    _one_line(code, err, "model.safetensors", "checksum mismatch")


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxruntime")
def test_onnx_backend_checks_model_onnx_and_only_what_it_reads(trained, tmp_path):
    from hydranet.serve.predictor import Predictor

    run = _copy(trained, tmp_path)
    (run / rundir.WEIGHTS).unlink()  # not read by this backend: a deployment may drop it
    assert Predictor.load(run, "onnxruntime").backend.name == "onnxruntime"
    with pytest.raises(UserError, match=r"model\.safetensors is listed in the run's manifest"):
        Run.load(run)
    _flip(run / "model.onnx")
    with pytest.raises(UserError, match=r"model\.onnx does not match the run's manifest"):
        Predictor.load(run, "onnxruntime")


def test_missing_or_resized_file_is_named(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / rundir.BEST).unlink()
    with pytest.raises(UserError, match=r"best\.safetensors is listed in the run's manifest"):
        Run.load(run)
    run2 = Path(shutil.copytree(trained["run"], tmp_path / "run2"))
    with open(run2 / rundir.METRICS, "a") as f:
        f.write("\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl does not match .*size differs"):
        Run.load(run2)


def test_garbage_manifest_is_one_line(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    for bad in (*GARBAGE.values(), b'{"format": "hydranet-manifest", "files": {"../x": {}}}'):
        (run / rundir.MANIFEST).write_bytes(bad)
        code, _, err = _cli(capsys, "evaluate", run)
        _one_line(code, err, "manifest.json")


def test_serve_refuses_a_corrupted_run(trained, tmp_path):
    # the real server process: it loads before binding, so it ends at once with one line
    run = _copy(trained, tmp_path)
    _flip(run / rundir.WEIGHTS)
    proc = subprocess.run(
        [sys.executable, "-m", "hydranet", "serve", str(run), "--port", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _one_line(proc.returncode, proc.stderr, "model.safetensors", "manifest")
    assert proc.stdout == ""


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxruntime")
def test_compress_writes_a_manifest(trained, tmp_path, capsys):
    out = tmp_path / "int8"
    code, _, err = _cli(capsys, "compress", trained["run"], "--int8", "--out", out)
    assert code == 0, err
    files = json.loads((out / rundir.MANIFEST).read_text())["files"]
    assert {"model.onnx", "compress.json", rundir.SPEC, rundir.PREPROCESSOR} <= set(files)
    rundir.verify_run(out)
    _flip(out / "model.onnx")
    code, _, err = _cli(capsys, "predict", out, trained["test"], "--output", tmp_path / "p.csv")
    _one_line(code, err, "model.onnx", "manifest")


def _corrupt(path: Path, rng) -> None:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "truncate", "append", "zero"])
    at = rng.randrange(len(data))
    if kind == "flip":
        data[at] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        del data[at:]
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    else:
        data[at : at + 16] = bytes(len(data[at : at + 16]))
    path.write_bytes(bytes(data))


def test_fuzz_corrupted_run_files(trained, tmp_path, capsys):
    """Random damage (seeded, bounded) to each file of the run: never a traceback, and never
    exit 0 with other metrics than the intact run's."""
    import random

    rng = random.Random(14)
    code, intact, _ = _cli(capsys, "evaluate", trained["run"], "--json")
    assert code == 0
    names = sorted(json.loads((trained["run"] / rundir.MANIFEST).read_text())["files"])
    cases = [(n, True) for n in names for _ in range(3)]
    # without a manifest only the weights check themselves: a changed digit in a JSON file
    # is then undetectable, which is what the manifest is for
    cases += [(rundir.WEIGHTS, False)] * 12
    for i, (name, keep_manifest) in enumerate(cases):
        run = Path(shutil.copytree(trained["run"], tmp_path / f"run{i}"))
        if not keep_manifest:
            (run / rundir.MANIFEST).unlink()
        _corrupt(run / name, rng)
        code, out, err = _cli(capsys, "evaluate", run, "--json")
        if keep_manifest:
            _one_line(code, err, name, "manifest")
        elif code == 0:  # damage to nothing read (the header's padding turned into other spaces)
            assert json.loads(out) == json.loads(intact), (name, err)
        else:
            _one_line(code, err)
        shutil.rmtree(run)


# ---------------------------------------------------------------- point 6: garbage run files
@pytest.mark.parametrize("name", META_FILES)
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_run_file_is_one_line_naming_it(trained, tmp_path, capsys, name, garbage):
    run = _copy(trained, tmp_path)
    (run / name).write_bytes(GARBAGE[garbage])
    # with the manifest, the changed bytes are reported as such
    _refused_everywhere(capsys, trained, tmp_path, run, name, "manifest")
    # without it (a run from before manifests), the file is still named in one line
    (run / rundir.MANIFEST).unlink()
    needle = str(
        run / name
    )  # "... is not valid JSON", "... is not a valid hydranet ...", or the spec's own errors
    if name == rundir.ENCODERS and garbage == "wrong-object":
        needle = f"{run / name} is not a valid hydranet encoder state: 'x' is not a feature group"
    _refused_everywhere(capsys, trained, tmp_path, run, needle)


@pytest.mark.parametrize(
    "name, content, needle",
    [
        (rundir.TASKS, {"click": {}, "value": {}, "kind": {}}, "tasks.json is not a valid"),
        (rundir.TASKS, {"kind": {"classes": 3}}, "tasks.json is not a valid"),
        (rundir.PREPROCESSOR, {"format_version": 2, "groups": 5}, "preprocessor.json"),
        (rundir.SPEC, {"name": "x"}, "spec.json"),
    ],
)
def test_wrong_shaped_state_is_named(trained, tmp_path, name, content, needle):
    run = _copy(trained, tmp_path)
    (run / rundir.MANIFEST).unlink()
    (run / name).write_text(json.dumps(content))
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        Run.load(run)


def test_garbage_metrics_log_is_one_line(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / rundir.METRICS).write_text('{"epoch": 1}\n{"epoch": 2, oops\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl is not valid JSON lines \(line 2\)"):
        rundir.read_metrics(run)
    (run / rundir.METRICS).write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=r"metrics\.jsonl is not valid JSON lines"):
        rundir.read_metrics(run)


# ---------------------------------------------------------------- checkpoints
def _unfinished(trained, tmp_path) -> Path:
    """A copy that looks interrupted after its last checkpoint: resumable."""
    run = _copy(trained, tmp_path)
    for name in (rundir.MANIFEST, rundir.WEIGHTS, rundir.FINAL, "model.onnx"):
        (run / name).unlink(missing_ok=True)
    return run


def test_flipped_checkpoint_refuses_resume_in_one_line(trained, tmp_path, capsys):
    run = _unfinished(trained, tmp_path)
    _flip(run / rundir.CHECKPOINT)
    before = sorted(p.name for p in run.iterdir())
    code, _, err = _cli(capsys, "train", trained["spec"], "--out", run, "--resume", "--no-progress")
    _one_line(code, err, "checkpoint.safetensors", "checksum mismatch", "cannot be resumed")
    assert "lr" not in err  # not the divergence advice a flipped checkpoint gave before
    assert sorted(p.name for p in run.iterdir()) == before


def test_truncated_checkpoint_refuses_resume_in_one_line(trained, tmp_path, capsys):
    run = _unfinished(trained, tmp_path)
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"\x10" + b[1:], lambda b: b[:5]):
        ckpt = (trained["run"] / rundir.CHECKPOINT).read_bytes()
        (run / rundir.CHECKPOINT).write_bytes(damage(ckpt))
        code, _, err = _cli(
            capsys, "train", trained["spec"], "--out", run, "--resume", "--no-progress"
        )
        _one_line(code, err, "checkpoint.safetensors", "cannot be resumed")


def test_checkpoint_digest_round_trip_and_older_files(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.zeros(0), "h": torch.ones(2).half()},
        "loop": {"epoch": 1, "step": 7},
        "rng": torch.arange(5, dtype=torch.uint8),
        "flag": torch.tensor(True),
        "bf": torch.randn(2, dtype=torch.bfloat16),
    }
    path = tmp_path / "checkpoint.safetensors"
    save_state(state, path)
    back = load_state(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["loop"]["step"] == 7
    # the best-epoch weights carry it too
    best = tmp_path / "best.safetensors"
    atomic_save_tensors({"w": torch.randn(64, 64)}, best)
    _flip(best)
    with pytest.raises(UserError, match=r"best\.safetensors is corrupted \(checksum mismatch\)"):
        load_tensors(best)
    # written before the digest existed: loads unchecked
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(2)}, str(old), metadata={"format": "hydranet"})
    tensors, meta = load_tensors(old)
    assert torch.equal(tensors["w"], torch.ones(2)) and "hydranet.sha256" not in meta


# ---------------------------------------------------------------- point 7: read-only export
def _unexported(trained, tmp_path) -> Path:
    run = _copy(trained, tmp_path)
    (run / "model.onnx").unlink()
    (run / rundir.MANIFEST).unlink()
    rundir.write_manifest(run)
    return run


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxruntime")
@pytest.mark.skipif(os.geteuid() == 0, reason="root is not restricted by file modes")
def test_export_into_a_read_only_run_is_one_line(trained, tmp_path, capsys):
    run = _unexported(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    os.chmod(run, 0o555)
    try:
        code, _, err = _cli(capsys, "export", run)
        _one_line(code, err, str(run), "not writable", "--onnx PATH")
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
        code, _, err = _cli(capsys, "export", run, "--onnx", tmp_path / "m.onnx")
        assert code == 0, err
    finally:
        os.chmod(run, 0o755)


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxruntime")
def test_export_into_a_read_only_file_system_is_one_line(trained, tmp_path):
    # as root (where the chmod test above is skipped): a read-only bind mount, in a private
    # mount namespace, gives EROFS, which no file mode lifts
    run, mnt = _unexported(trained, tmp_path), tmp_path / "mnt"
    mnt.mkdir()
    if not read_only_mount_works(run, mnt):
        pytest.skip("needs root and a mount namespace (unshare) for a read-only bind mount")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = hydranet_on_read_only_mount(run, mnt, ["export", str(mnt)])
    _one_line(res.returncode, res.stderr, f"run directory {mnt} is not writable", "--onnx PATH")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_api_load_reads_a_table(trained):
    # the intact run still loads and predicts after all this checking
    run = Run.load(trained["run"])
    preds = run.predict(pq.read_table(trained["test"]))
    assert isinstance(preds, pa.Table) and preds.num_rows == 200


def test_weights_are_as_readable_as_the_runs_other_files(trained):
    # safetensors creates its files 0600: a server running as another user could read the
    # run's JSON but not its weights
    run = Path(trained["run"])
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["spec.json"] == 0o666 & ~_current_umask(), modes
    assert modes.get("checkpoint.safetensors", modes["spec.json"]) == modes["spec.json"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
