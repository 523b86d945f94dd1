"""Smoke run of benchmarks/serve_latency.py: a tiny run, one real server, a few hundred requests.

No timing is asserted; the section goes to a temporary RESULTS file and the real
benchmarks/RESULTS.md stays byte for byte.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import serve_latency  # noqa: E402

pytestmark = pytest.mark.service


def test_serve_latency_smoke(tmp_path, capsys):
    real = _common.DEFAULT_RESULTS
    before = real.read_bytes() if real.exists() else None
    results = tmp_path / "RESULTS.md"
    assert (
        serve_latency.main(["--smoke", "--results", str(results), "--out", str(tmp_path / "work")])
        == 0
    )
    text = results.read_text()
    assert "<!-- BEGIN serve-latency -->" in text and "## Serving latency" in text
    assert "closed loop" in text and "open loop, 200 req/s offered" in text
    printed = capsys.readouterr().out
    assert "rows/s" in printed and "p99" in printed
    assert (real.read_bytes() if real.exists() else None) == before
