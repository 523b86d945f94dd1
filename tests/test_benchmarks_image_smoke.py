"""benchmarks/image_throughput.py --smoke: the decode cache across processes and every encoder
configuration's training run, on generated PNGs, into a temporary RESULTS file. No timing is
asserted: only what was decoded, cached and trained."""

from __future__ import annotations

import os

import pytest
import torch

from tests_helpers import benchmarks_on_path

benchmarks_on_path()


@pytest.mark.slow  # 8 training runs and 2 processes (~20 s of CPU): `make bench-smoke` runs it
def test_image_throughput_smoke(tmp_path, scratch_results):
    import image_throughput

    data_dir = os.environ.get("HYDRANET_DATA_DIR")
    results = scratch_results
    work = tmp_path / "work"
    argv = ["--smoke", "--results", str(results), "--out", str(work)]
    out = image_throughput.main(argv)
    records = out["records"]
    decode = [r for r in records if r["kind"] == "decode"]
    assert len(decode) == 1
    first, second = decode[0]["first"], decode[0]["second"]
    # the first process decoded every training image and wrote one cache file; the second,
    # a new process, decoded nothing and found that file, not rewritten
    assert first["pid"] != second["pid"]
    assert first["decoded"] == first["rows"] == 80 and first["before"] == {}
    assert second["decoded"] == 0 and len(first["after"]) == 1
    assert second["before"] == second["after"] == first["after"] and decode[0]["same_file"]
    train = {r["config"]: r for r in records if r["kind"] == "train" and r["threads"] == 2}
    assert set(train) == {c[0] for c in image_throughput.CONFIGS}
    assert [r["threads"] for r in records if r["kind"] == "train"].count(1) == 1
    for r in train.values():
        # the training split came from the cache: only validation and test (20 rows each,
        # under the cache's minimum, so decoded in memory) were decoded, once per run
        assert r["decoded"] == 40 and len(r["epochs"]) == 1 and r["rows_per_s"] > 0
    frozen = train["mobilenet_v2 frozen"]["trainable"]
    assert frozen < train["mobilenet_v2 last 2 blocks"]["trainable"]
    assert (
        train["mobilenet_v2 last 2 blocks"]["trainable"]
        < train["mobilenet_v2 full fine-tune"]["trainable"]
    )
    assert train["mobilenet_v2 frozen, embeddings cached"]["trainable"] == frozen
    assert list((work / "data" / "embeddings").glob("*.npy"))  # the frozen runs' embeddings
    text = results.read_text()
    assert "keep me" in text and text.count("<!-- BEGIN image-throughput -->") == 1
    assert "| smoke | 80 × 16 px |" in text and "| yes |" in text
    assert "| smoke | mobilenet_v2 last 2 blocks | 2 |" in text
    # a second call skips what results.jsonl holds and writes the same records
    assert image_throughput.main([*argv, "--report-only"])["records"] == records
    assert os.environ.get("HYDRANET_DATA_DIR") == data_dir  # put back after the runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_image_throughput_refuses_cuda_where_there_is_none(tmp_path):
    import image_throughput

    argv = ["--smoke", "--device", "cuda", "--results", str(tmp_path / "R.md")]
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
        image_throughput.main([*argv, "--out", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists() and not (tmp_path / "R.md").exists()
