"""Smoke run of benchmarks/census_mtl.py: every configuration trains on a tiny census-shaped
table, pairs with the single-task baseline for Δm%, and writes only its own section of a
temporary RESULTS file. No timing is asserted."""

from __future__ import annotations

import json

from tests_helpers import benchmarks_on_path

benchmarks_on_path()

import _common  # noqa: E402


def test_census_mtl_smoke(tmp_path, scratch_results):
    import census_mtl

    results = scratch_results
    work = tmp_path / "work"
    argv = ["--smoke", "--threads", "1", "--results", str(results), "--out", str(work)]
    argv += ["--configs", "single_task_tree", "cross_stitch_tree"]
    argv += ["income_only_tree", "marital_only_tree"]
    argv += ["single_task_tree_wide", "cross_stitch_tree_wide"]
    records = census_mtl.main(argv)["records"]
    assert sorted(r["model"] for r in records) == [
        "cross_stitch_tree",
        "cross_stitch_tree_wide",
        "income_only_tree",
        "marital_only_tree",
        "single_task_tree",
        "single_task_tree_wide",
    ]
    # the cross-stitch networks are the single-task ones plus a 2 x 2 mixing matrix
    params = {r["model"]: r["parameters"] for r in records}
    assert params["cross_stitch_tree"] - params["single_task_tree"] == 4
    # two hidden layers: a 2 x 2 mix after each
    assert params["cross_stitch_tree_wide"] - params["single_task_tree_wide"] == 8
    for r in records:
        assert all(0.0 <= auc <= 1.0 for auc in r["test"].values())
    # a one-task model is evaluated on its own task only
    assert list(next(r for r in records if r["model"] == "marital_only_tree")["test"]) == [
        "marital"
    ]
    spec = json.loads((work / "runs" / "cross_stitch_tree_s0" / "spec.json").read_text())
    assert spec["model"]["encoders"]["numeric"]["params"]["bins"] == "tree"
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-mtl -->" in text
    assert "| baseline |" in text and "income − LightGBM" in text
    # the wide cross-stitch is paired with the wide single-task model, and says so
    wide_row = next(
        line for line in text.splitlines() if line.startswith("| `cross_stitch_tree_wide`")
    )
    assert "vs `single_task_tree_wide`" in wide_row
    assert text.count("| baseline |") == 2
    # the two one-task models of a seed make one row, paired with the baseline
    assert "| `separate_tree` (" in text and "| 1+1 |" in text
    assert "Acceptance 1 (" in text and "Acceptance 2 (" in text
    # a row trained elsewhere (its source recorded) is reported, with the note saying so
    _common.append_jsonl(
        work / "results.jsonl", {**records[0], "model": "mmoe_tree", "source": "DIR"}
    )
    census_mtl.main([*argv, "--report-only"])
    assert "`mmoe_tree` seed(s) 0 were not trained by this script: DIR." in results.read_text()
