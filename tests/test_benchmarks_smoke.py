"""Smoke runs of the benchmarks (benchmarks/census_paper.py, census_encoders.py, multifashion.py,
synthetic_correlation.py, peers_census.py, census_gbdt.py) and of their shared RESULTS.md writer.

Each script's ``main(["--smoke", ...])`` runs in-process at tiny sizes on offline data
(a random census-shaped table, a small synthetic problem), writing into a temporary
RESULTS file: the real benchmarks/RESULTS.md must stay byte for byte. No timing is
asserted. The peer benchmarks need the optional ``bench`` extra (deepctr-torch; lightgbm
and xgboost) and are skipped without it; the synthetic plot needs matplotlib (same extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from tests_helpers import OTHER_SECTION as OTHER
from tests_helpers import benchmarks_on_path

benchmarks_on_path()

import _common  # noqa: E402


def test_write_section_replaces_only_its_own_section(scratch_results):
    path = scratch_results
    _common.write_section(path, "mine", "first")
    _common.write_section(path, "mine", "second")
    text = path.read_text()
    assert text.count("<!-- BEGIN mine -->") == 1 and "second" in text and "first" not in text
    assert text.startswith(OTHER.rstrip("\n"))  # the other section is untouched
    path.write_text(text + "\n<!-- BEGIN mine -->\nagain\n<!-- END mine -->\n")
    with pytest.raises(RuntimeError, match="appears 2 times"):
        _common.write_section(path, "mine", "third")


def test_about_section_goes_under_the_title_once(scratch_results):
    path = scratch_results
    _common.ensure_about(path)
    _common.ensure_about(path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n\n<!-- BEGIN about -->")
    assert text.count("<!-- BEGIN about -->") == 1 and "keep me" in text
    assert text.index("<!-- END about -->") < text.index("<!-- BEGIN other -->")


def test_smoke_refuses_the_real_results_file():
    args = _common.base_parser("x").parse_args(
        ["--smoke", "--results", str(_common.DEFAULT_RESULTS)]
    )
    with pytest.raises(SystemExit, match="must not write"):
        _common.results_path(args)
    assert _common.results_path(_common.base_parser("x").parse_args(["--smoke"])) is None


def test_provenance_names_command_machine_versions_and_date():
    text = _common.provenance("cmd --flag", threads=2)
    assert "Command: `cmd --flag`" in text
    for key in ("- Machine:", "torch threads 2", "- Versions:", "torch ", "hydranet ", "- Date:"):
        assert key in text


def test_census_paper_smoke(tmp_path, scratch_results):
    import census_paper

    results = scratch_results
    summary = census_paper.main(
        ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    )
    assert set(summary) == set(census_paper.TRUNK_PARAMS)  # every trunk ran
    assert summary["single_task"]["delta_m"] == pytest.approx(0.0)
    for row in summary.values():
        assert 0.0 <= row["income"]["mean"] <= 1.0 and 0.0 <= row["marital"]["mean"] <= 1.0
        assert row["parameters"]["trunk"] > 0
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-paper -->" in text
    assert text.index("<!-- BEGIN about -->") < text.index("<!-- BEGIN other -->")
    assert "| `mmoe` |" in text and "paper income best / mean" in text
    # re-running skips the (trunk, seed) pairs already in results.jsonl and rewrites the table
    again = census_paper.main(
        ["--smoke", "--report-only", "--results", str(results), "--out", str(tmp_path / "work")]
    )
    assert again["mmoe"]["income"] == summary["mmoe"]["income"]
    assert results.read_text().count("<!-- BEGIN census-paper -->") == 1


def test_census_encoders_smoke(tmp_path, scratch_results):
    import census_encoders

    results = scratch_results
    argv = ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    records = census_encoders.main(argv)["records"]
    # every numeric encoder trained (piecewise_linear's bins fitted from the training split)
    assert sorted(r["encoder"] for r in records) == sorted(census_encoders.ENCODERS)
    for r in records:
        assert 0.0 <= r["test"]["income"] <= 1.0 and r["parameters"]["encoder"] > 0
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-encoders -->" in text
    assert "| `piecewise_linear` | 1 |" in text
    # re-running skips the (encoder, seed) pairs already in results.jsonl
    again = census_encoders.main([*argv, "--report-only"])["records"]
    assert again == records
    # another trunk: its rows beside MMoE's, paired with its own identity run
    more = census_encoders.main([*argv, "--trunks", "single_task", "--encoders", "identity"])
    assert sorted(r.get("trunk", "mmoe") for r in more["records"]).count("single_task") == 1
    assert "| `single_task` | `identity` | 1 |" in results.read_text()


def test_census_tuned_smoke(tmp_path, scratch_results):
    import census_tuned

    results = scratch_results
    argv = ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    records = census_tuned.main(argv)["records"]
    # both shipped specs train (piecewise-linear bins, embedding 16) and pair up for Δm%
    assert sorted(r["model"] for r in records) == ["mmoe", "single_task"]
    for r in records:
        assert 0.0 <= r["test"]["income"] <= 1.0 and r["parameters"] > 0
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-tuned -->" in text
    assert "Δm% of the MMoE against the single-task models, paired by seed" in text
    assert census_tuned.main([*argv, "--report-only"])["records"] == records


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the bench extra")
def test_synthetic_correlation_smoke(tmp_path, scratch_results):
    import synthetic_correlation

    results = scratch_results
    plot = tmp_path / "curves.png"
    out = synthetic_correlation.main(
        [
            "--smoke",
            "--results",
            str(results),
            "--out",
            str(tmp_path / "work"),
            "--plot",
            str(plot),
        ]
    )
    assert plot.is_file() and plot.stat().st_size < 200_000
    assert set(out["summary"]) == set(synthetic_correlation.CORRELATIONS)
    text = results.read_text()
    assert "keep me" in text and "<!-- END synthetic-correlation -->" in text


@pytest.mark.skipif(
    importlib.util.find_spec("deepctr_torch") is None,
    reason="deepctr-torch is in the optional bench extra (pip install -e '.[bench]')",
)
def test_peers_census_smoke(tmp_path, scratch_results):
    import peers_census

    results = scratch_results
    out = peers_census.main(["--smoke", "--results", str(results), "--out", str(tmp_path / "work")])
    for side in ("deepctr", "hydranet"):
        assert out[side]["train_rows_per_s"] and all(v > 0 for v in out[side]["train_rows_per_s"])
        assert set(out[side]["auc"]) == {"income", "marital"}
    # the same sizes on both sides: parameter counts within the biases DeepCTR leaves out
    assert abs(out["deepctr"]["parameters"] - out["hydranet"]["parameters"]) <= 32
    assert "keep me" in results.read_text()


@pytest.mark.skipif(
    importlib.util.find_spec("lightgbm") is None or importlib.util.find_spec("xgboost") is None,
    reason="lightgbm and xgboost are in the optional bench extra (pip install -e '.[bench]')",
)
def test_census_gbdt_smoke(tmp_path, scratch_results):
    import census_gbdt

    results = scratch_results
    argv = ["--smoke", "--threads", "1", "--results", str(results), "--out", str(tmp_path / "w")]
    out = census_gbdt.main(argv)
    models = out["models"]
    assert set(models) == set(census_gbdt.MODELS)  # every peer and both hydranet configs ran
    for row in models.values():
        for t in census_gbdt.TASKS:
            assert 0.0 <= row["test"][t][0] <= 1.0 and row["gap"][t] is not None
    for name in census_gbdt.PEERS:  # early stopping kept a round within the smoke's cap
        assert all(1 <= models[name]["size"][t] <= 20 for t in census_gbdt.TASKS)
    assert {out["reference"][t] for t in census_gbdt.TASKS} <= {"lightgbm-31", "lightgbm-63"}
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-gbdt -->" in text
    assert "every model ran with 1 thread(s)" in text and "| XGBoost, hist, depth 6 | 1 |" in text
    # re-running skips the (model, seed) pairs already in results.jsonl
    again = census_gbdt.main([*argv, "--report-only"])
    assert again["records"] == out["records"]


def test_a_script_stops_on_a_hydranet_error_with_one_line_and_exit_2(capsys):
    from hydranet.errors import DataError

    def main():
        raise DataError("data file not found: x.parquet")

    with pytest.raises(SystemExit) as e:
        _common.run_main(main)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: data file not found: x.parquet")
    with pytest.raises(SystemExit) as e:
        _common.run_main(lambda: 3)  # an int result is the exit status
    assert e.value.code == 3
    _common.run_main(lambda: {"summary": 1})  # anything else: a normal end


def test_multifashion_smoke(tmp_path, scratch_results):
    import multifashion

    results = scratch_results
    argv = ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    records = multifashion.main(argv)["records"]
    assert sorted(r["model"] for r in records) == sorted(multifashion.MODELS)
    for r in records:
        assert set(r["test"]) == {"left", "right"} and r["parameters"] > 0
        assert all(0.0 <= v <= 1.0 for v in r["test"].values())
    # one network per task: two runs, each with its own CNN and only its own label
    single = next(r for r in records if r["model"] == "single_task")
    assert len(single["best_epoch"]) == 2
    runs = sorted(p.name for p in (tmp_path / "work" / "runs").iterdir())
    assert (
        "multifashion_single_task_left_s0_e1" in runs
        and "multifashion_mgda_ub_left_right_s0_e1" in runs
    )
    spec = json.loads(
        (tmp_path / "work/runs/multifashion_mmoe_head1_left_right_s0_e1/spec.json").read_text()
    )
    assert spec["model"]["head_init_scale"] == 1.0 and spec["model"]["architecture"] == "mmoe"
    text = results.read_text()
    assert "keep me" in text and "<!-- END multifashion -->" in text
    assert "| `mgda_ub` (shared-bottom, MGDA-UB) | 1 |" in text and "Sener" in text
    assert "| `single_task` (one network per task) | 1 |" in text and "paired by seed" in text
    # re-running skips the (model, seed) pairs already in results.jsonl
    assert multifashion.main([*argv, "--report-only"])["records"] == records
    # another training budget gets a table of its own, its seeds not mixed with these
    longer = [{**r, "epochs": 20, "train_rows": 500} for r in records]
    text = multifashion.render(records + longer, argparse.Namespace(device="cpu", threads=1), "c")
    assert text.count("| `mmoe` (MMoE, 4 experts, equal weights) | 1 |") == 2
    assert "**At most 20 epochs, the first 500 training rows:**" in text
