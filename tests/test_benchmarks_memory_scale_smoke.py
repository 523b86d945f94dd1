"""benchmarks/memory_scale.py --smoke: the out-of-core benchmark end to end at tiny sizes."""

import subprocess
import sys

import pytest

from tests_helpers import ROOT


@pytest.mark.slow  # two training subprocesses: `make bench-smoke` runs it, `make test` does not
def test_memory_scale_benchmark_smoke():
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_scale.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 15,000 |" in res.stdout  # the table, for both sizes
