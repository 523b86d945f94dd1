"""Smoke runs of the balancing benchmarks (benchmarks/balance_overhead.py, balance_census.py).

Tiny sizes, in-process (one import of torch for both), results into a temporary file:
the real benchmarks/RESULTS.md must stay untouched. No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402

MY_SECTIONS = ("balance-overhead", "balance-census")


def _my_sections() -> dict[str, str | None]:
    """This file's sections of the real RESULTS.md (others may write theirs concurrently)."""
    path = _common.DEFAULT_RESULTS
    text = path.read_text() if path.exists() else ""
    out: dict[str, str | None] = {}
    for name in MY_SECTIONS:
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        i, j = text.find(begin), text.find(end)
        out[name] = text[i:j] if i >= 0 and j >= 0 else None
    return out


@pytest.fixture
def real_results_untouched():
    before = _my_sections()
    yield
    assert _my_sections() == before, "a --smoke run changed benchmarks/RESULTS.md"


def test_balance_overhead_smoke(tmp_path, real_results_untouched):
    import balance_overhead

    from hydranet.balance import BALANCERS

    results = tmp_path / "RESULTS.md"
    rows = balance_overhead.main(
        ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    )
    # every registered balancer went through Trainer.train_step, with both rep_grad settings
    # where it takes one
    assert {r["method"] for r in rows} == set(BALANCERS.names())
    assert len(rows) == len(balance_overhead.configs(BALANCERS.names()))
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["ratio"] > 0 and r["ratio_p10"] > 0 for r in rows)
    text = results.read_text()
    assert "<!-- BEGIN balance-overhead -->" in text and "<!-- END balance-overhead -->" in text
    assert "| `nash_mtl` | gradient | true |" in text


def test_balance_census_smoke(tmp_path, real_results_untouched):
    import balance_census

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- BEGIN other -->\nkeep me\n<!-- END other -->\n")
    summary = balance_census.main(
        ["--smoke", "--results", str(results), "--out", str(tmp_path / "work")]
    )
    assert set(summary) == {"single_task", "ew", "pcgrad"}
    assert summary["single_task"]["delta_m"] == pytest.approx(0.0)
    for row in summary.values():
        assert 0.0 <= row["income"][0] <= 1.0 and 0.0 <= row["marital"][0] <= 1.0
    text = results.read_text()
    assert "keep me" in text  # another script's section survives
    assert "<!-- BEGIN balance-census -->" in text and "| `pcgrad` | gradient | 1 |" in text


def test_smoke_refuses_real_results():
    import balance_overhead

    with pytest.raises(SystemExit, match="must not write"):
        balance_overhead.main(["--smoke", "--results", str(_common.DEFAULT_RESULTS)])
