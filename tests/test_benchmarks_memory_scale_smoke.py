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


def test_memory_scale_writes_only_its_own_section(tmp_path):
    """It once cut RESULTS.md from its heading to the next '## ' (none: every later section)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "memory_scale", ROOT / "benchmarks" / "memory_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    original = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    results.write_text(original)
    module.write_results("| rows |\n| ---: |\n| 1 |", "python benchmarks/memory_scale.py", results)
    new = results.read_text()
    begin, end = "<!-- BEGIN memory-scale -->", "<!-- END memory-scale -->"
    assert new.count(begin) == new.count(end) == 1
    outside = lambda text: text[: text.index(begin)] + text[text.index(end) :]  # noqa: E731
    assert outside(new) == outside(original)  # every other section byte for byte
    assert "| 1 |" in new and "Command: `python benchmarks/memory_scale.py`" in new
