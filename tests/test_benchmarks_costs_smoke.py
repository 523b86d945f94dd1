"""Smoke run of benchmarks/census_costs.py: every configuration builds a real Trainer on a tiny
census-shaped table and is timed; the MMoE example is the unit of the ratios; only its own
section of a temporary RESULTS file is written. No timing is asserted."""

from __future__ import annotations

from tests_helpers import benchmarks_on_path

benchmarks_on_path()


def test_census_costs_smoke(tmp_path, scratch_results):
    import census_costs

    results = scratch_results
    argv = ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    out = census_costs.main([*argv, "--configs", "mmoe_pl_tree", "tabm_identity"])
    # the MMoE example is always measured: it is what the ratios divide by
    assert set(out["speeds"]) == {"mmoe_identity", "mmoe_pl_tree", "tabm_identity"}
    assert all(len(s) == 2 and min(s) > 0 for s in out["speeds"].values())
    # tree bins add the binned numeric embedding's parameters to the same MMoE
    assert out["parameters"]["mmoe_pl_tree"] > out["parameters"]["mmoe_identity"]
    text = results.read_text()
    assert "keep me" in text and "<!-- END census-costs -->" in text
    assert "| `mmoe_identity` (MMoE example, numeric values as they are) |" in text
    assert text.count("| 1.000 |") >= 1
