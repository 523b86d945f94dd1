"""The CLI: the happy path, and bad input exiting 2 with one line that names the culprit."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hydranet.cli import main


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_train_evaluate_predict(tiny, tmp_path, capsys):
    spec = tiny(epochs=2)
    code, out, _ = _cli(capsys, "plan", str(spec))
    assert code == 0
    assert (
        '"architecture": "mmoe"' in out and "encoder" in out and "600 rows" in out.replace(",", "")
    )
    assert "fusion 'concat' → " in out
    code, out, _ = _cli(capsys, "plan", str(spec), "--set", 'model.fusion="gated"')
    assert code == 0 and "fusion 'gated' → one trunk input per task, 64 each" in out
    code, out, _ = _cli(
        capsys, "plan", str(spec), "--set", "model.fusion_params={norm=true,modality_dropout=0.2}"
    )
    assert code == 0 and "fusion 'concat' (norm = True, modality_dropout = 0.2) → " in out
    code, _, err = _cli(
        capsys,
        "train",
        str(spec),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--set",
        "train.epochs=1",
    )
    assert code == 0 and "epoch 1" in err
    assert (
        len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1
    )  # --set took effect
    code, out, _ = _cli(capsys, "evaluate", str(tmp_path / "r"), "--split", "test")
    assert code == 0 and "click" in out and "auc" in out
    code, out, _ = _cli(capsys, "evaluate", str(tmp_path / "r"), "--json")
    metrics = json.loads(out)
    assert set(metrics) == {"click", "value", "kind"} and set(metrics["click"]) == {
        "auc",
        "logloss",
        "accuracy",
    }
    out_file = tmp_path / "pred.parquet"
    code, _, _ = _cli(
        capsys,
        "predict",
        str(tmp_path / "r"),
        str(tiny.paths["test"]),
        "--output",
        str(out_file),
        "--keep",
        "size",
    )
    assert code == 0
    preds = pq.read_table(out_file)
    assert preds.num_rows == 200 and preds.column_names[:2] == ["size", "click"]


def _bad_cases(tiny, tmp_path):
    spec = tiny()
    text = spec.read_text()

    def variant(name, new_text):
        p = tmp_path / name
        p.write_text(new_text)
        return str(p)

    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(tiny.paths["train"]).slice(0, 0), empty)
    strlabel = tmp_path / "strlabel.parquet"
    t = pq.read_table(tiny.paths["train"])
    pq.write_table(
        t.set_column(t.column_names.index("value"), "value", pa.array(["high"] * t.num_rows)),
        strlabel,
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = str(tmp_path / "out")
    return [
        (
            "unknown key",
            [
                "train",
                variant("k.toml", text.replace("lr = 0.01", "lr = 0.01\nlearning_rate = 0.1")),
                "--out",
                out,
            ],
            "train.learning_rate",
        ),
        (
            "wrong type",
            [
                "train",
                variant("t.toml", text.replace("batch_size = 64", 'batch_size = "big"')),
                "--out",
                out,
            ],
            "train.batch_size",
        ),
        ("missing spec", ["train", str(tmp_path / "nope.toml"), "--out", out], "nope.toml"),
        (
            "missing data file",
            [
                "train",
                variant(
                    "f.toml", text.replace(str(tiny.paths["train"]), str(tmp_path / "gone.parquet"))
                ),
                "--out",
                out,
            ],
            "gone.parquet",
        ),
        (
            "missing column",
            [
                "train",
                variant(
                    "c.toml",
                    text.replace('numeric = ["a", "b", "c"]', 'numeric = ["a", "b", "zz"]'),
                ),
                "--out",
                out,
            ],
            "'zz'",
        ),
        (
            "string numeric label",
            [
                "train",
                variant("s.toml", text.replace(str(tiny.paths["train"]), str(strlabel))),
                "--out",
                out,
            ],
            "'value'",
        ),
        (
            "empty file",
            [
                "train",
                variant("e.toml", text.replace(str(tiny.paths["train"]), str(empty))),
                "--out",
                out,
            ],
            "empty.parquet",
        ),
        (
            "unknown architecture",
            [
                "train",
                variant(
                    "a.toml", text.replace('architecture = "mmoe"', 'architecture = "transformer9"')
                ),
                "--out",
                out,
            ],
            "transformer9",
        ),
        (
            "unknown task kind",
            [
                "train",
                variant("tk.toml", text.replace('kind = "multiclass"', 'kind = "ranking"')),
                "--out",
                out,
            ],
            "tasks[2].kind",
        ),
        (
            "negative batch size",
            [
                "train",
                variant("n.toml", text.replace("batch_size = 64", "batch_size = -8")),
                "--out",
                out,
            ],
            "train.batch_size",
        ),
        ("unwritable output dir", ["train", str(spec), "--out", str(a_file / "run")], "a_file"),
        ("malformed toml", ["plan", variant("m.toml", text + "\n[[tasks]\n")], "m.toml"),
        (
            "unknown balance method",
            ["plan", variant("b.toml", text + '\n[balance]\nmethod = "magic"\n')],
            "balance.method",
        ),
        ("bad --set", ["train", str(spec), "--out", out, "--set", "train.epochs"], "train.epochs"),
        (
            "bad balancer parameter value",
            ["train", str(spec), "--out", out, "--set", "balance.method=dwa"]
            + ["--set", "balance.params.temperature=0"],
            "balance.params.temperature",
        ),
        (
            "trunk parameter of the wrong type",
            ["train", str(spec), "--out", out, "--set", "model.params.num_experts=many"],
            "model.params.num_experts",
        ),
        (
            "list index out of range",
            ["plan", str(spec), "--set", "tasks.7.weight=2"],
            "tasks.7.weight",
        ),
        (
            "list item addressed by name",
            ["plan", str(spec), "--set", "tasks.click.weight=2"],
            "tasks.click.weight",
        ),
        ("not a run", ["evaluate", str(tmp_path)], str(tmp_path)),
        (
            "bad early stopping metric",
            [
                "train",
                variant("es.toml", text + 'early_stopping = { metric = "click.rmse" }\n'),
                "--out",
                out,
            ],
            "click.rmse",
        ),
    ]


def test_bad_input_exits_2_with_one_line_naming_the_culprit(tiny, tmp_path, capsys):
    cases = _bad_cases(tiny, tmp_path)
    assert len(cases) >= 10
    for name, argv, culprit in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        assert err.strip().count("\n") == 0, f"{name}: more than one line: {err!r}"
        assert culprit in err, f"{name}: {culprit!r} not in {err!r}"
        assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_set_addresses_list_items(tiny):
    from hydranet.cli import _load_spec

    spec = _load_spec(str(tiny()), ["tasks.0.weight=2", "tasks[2].weight=0.5"])
    assert [t.weight for t in spec.tasks] == [2.0, 1.0, 0.5]
    spec = _load_spec(str(tiny()), ["tasks[1].metrics=['rmse']", "model.tower.0=4"])
    assert spec.tasks[1].metrics == ["rmse"] and spec.model.tower == [4]


def test_real_process_exit_code_and_no_traceback(tiny, tmp_path):
    spec = tiny()
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace("batch_size = 64", "batch_size = -8"))
    res = subprocess.run(
        [sys.executable, "-m", "hydranet", "train", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("hydranet: error:") and "train.batch_size" in res.stderr
    assert "Traceback" not in res.stderr


def test_existing_run_is_not_overwritten(tiny, tmp_path, capsys):
    spec = tiny(epochs=1)
    assert _cli(capsys, "train", str(spec), "--out", str(tmp_path / "r"), "--no-progress")[0] == 0
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    code, _, err = _cli(capsys, "train", str(spec), "--out", str(tmp_path / "r"))
    assert code == 2 and "--resume" in err
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
