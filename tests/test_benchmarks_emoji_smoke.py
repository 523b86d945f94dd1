"""benchmarks/emoji_multimodal.py --smoke: every configuration, both label fractions, the
resumable results.jsonl and the section, on a tiny generated emoji-like table.

The pretrained encoders get stand-ins: torchvision's mobilenet_v2 with random weights and
the tiny BertModel of test_pretrained, so nothing is fetched."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402

from test_benchmarks_smoke import OTHER  # noqa: E402
from test_pretrained import write_tiny_bert  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(tmp_path: Path) -> list[str]:
    from torchvision.models import mobilenet_v2

    mobilenet = tmp_path / "mobilenet_v2.pth"
    torch.save(mobilenet_v2().state_dict(), mobilenet)
    write_tiny_bert(tmp_path / "minilm")
    return ["--mobilenet", str(mobilenet), "--minilm", str(tmp_path / "minilm")]


def test_emoji_multimodal_smoke(tmp_path):
    import emoji_multimodal as E

    before = _common.DEFAULT_RESULTS.read_bytes()
    results = tmp_path / "RESULTS.md"
    results.write_text(OTHER)
    work = tmp_path / "work"
    argv = ["--smoke", "--threads", "1", "--results", str(results), "--out", str(work)]
    argv += _weights(tmp_path)
    records = E.main(argv)["records"]
    full = {r["config"] for r in records if r["fraction"] == 1.0}
    assert full == set(E.CONFIGS)  # every configuration trained at 100%
    small = [r for r in records if r["fraction"] == E.SMALL_FRACTION]
    # the best of each family (scratch / pretrained multimodal, picture, words) at 10%
    assert len(small) == 4 and {r["config"] for r in small} == set(
        E.small_fraction_configs(records)
    )
    for r in records:
        assert set(r["test"]) == set(E.TASKS) and 0.0 < r["trainable"] <= r["parameters"]
        assert ("modality_weights" in r) == r["config"].endswith("_gated")
    for r in records:  # the frozen encoders' weights are counted apart
        pretrained = (
            E.CONFIGS[r["config"]][0] == "mobilenet_v2" or E.CONFIGS[r["config"]][1] == "minilm"
        )
        assert (r["trainable"] < r["parameters"]) == pretrained
    gated = next(r for r in records if r["config"] == "mm_scratch_gated")
    for task in E.TASKS:  # one weight per group, summing to 1
        weights = gated["modality_weights"][task]
        assert set(weights) == {"image", "text", "numeric"}
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    # the 10% file: labels kept on a tenth of the rows, at least one per subcategory
    labelled = pq.read_table(next(work.glob("train_labels10_s0.parquet")))
    kept = labelled.filter(labelled["category"].is_valid())
    assert 0 < kept.num_rows < labelled.num_rows
    assert set(kept["subcategory"].to_pylist()) == set(labelled["subcategory"].to_pylist()) - {None}
    text = results.read_text()
    assert "keep me" in text and text.count("<!-- BEGIN emoji-multimodal -->") == 1
    assert "| multimodal scratch, gated | 100% | 1 |" in text and "| 10% |" in text
    # re-running skips the runs already in results.jsonl
    assert E.main([*argv, "--report-only"])["records"] == records
    assert E.main(argv)["records"] == records
    assert _common.DEFAULT_RESULTS.read_bytes() == before
