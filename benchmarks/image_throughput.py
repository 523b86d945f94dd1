"""Image throughput (issue 16): the decode cache, and training images/s of scratch, frozen and
fine-tuned image encoders, with hydranet's own trainer.

Two data sets: emoji (1,548 training rows, 64 px PNGs) and MultiFashion (28 px; the first
``--mf-rows`` training rows, a tenth of that for validation and test). Everything the
benchmark caches (decoded images, frozen embeddings) goes to ``<out>/data`` (it runs with
``HYDRANET_DATA_DIR`` there), so the first decode is a real one, whatever the user's cache holds.

* **decode**: the image group's ``transform`` on the training split in a fresh process with an
  empty cache (decode + cache write), then again in a NEW process (cache hit); each process
  reports its images/s, the images it decoded (``decoded_count()``) and the cache files with
  their mtimes, which must be the same file, untouched, after the second.
* **training**: ``hydranet.train`` on a spec with the image group alone; images/s per epoch
  from metrics.jsonl (one image column: a row is an image). The frozen MobileNetV2 trains on
  embeddings computed once before the first epoch: that time is measured apart (around
  ``transfer.encode_frozen``), and a second frozen run shows the embedding cache.

Results go to ``<out>/results.jsonl`` as they come and are skipped when the same command runs
again; ``--report-only`` writes the section from what is there.

    .venv/bin/python benchmarks/image_throughput.py
    .venv/bin/python benchmarks/image_throughput.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTION = "image-throughput"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
TASKS = {
    "emoji": {"category": "multiclass", "subcategory": "multiclass", "skin_tones": "binary"},
    "multifashion": {"left": "multiclass", "right": "multiclass"},
    "smoke": {"shape": "multiclass", "dark": "binary"},
}
SIZES = {"emoji": 64, "multifashion": 28, "smoke": 16}
BATCH = {"emoji": 128, "multifashion": 256, "smoke": 32}
OTHER_THREADS = -1
"""The thread comparison's count: 1, or 2 when ``--threads`` is 1."""
# (config, encoder, params, threads: None for --threads); the last is the thread comparison
CONFIGS: list[tuple[str, str, dict[str, Any], int | None]] = [
    ("cnn, augment", "cnn", {"augment": True}, None),
    ("cnn, no augment", "cnn", {"augment": False}, None),
    ("mobilenet_v2 frozen", "mobilenet_v2", {"freeze": True}, None),
    ("mobilenet_v2 frozen, embeddings cached", "mobilenet_v2", {"freeze": True}, None),
    (
        "mobilenet_v2 last 2 blocks",
        "mobilenet_v2",
        {"freeze": True, "unfreeze_after": 0, "unfreeze_blocks": 2},
        None,
    ),
    ("mobilenet_v2 full fine-tune", "mobilenet_v2", {"freeze": False}, None),
    ("cnn, augment", "cnn", {"augment": True}, OTHER_THREADS),
]


def threads_of(config: tuple, args) -> int:
    threads = config[3]
    if threads == OTHER_THREADS:
        return 2 if args.threads == 1 else 1
    return threads or args.threads


# ------------------------------------------------------------------ data
def smoke_data(work: Path) -> dict[str, Path]:
    """80/20/20 rows of generated 16 px RGBA PNGs (bytes): at least the image cache's 64 rows
    in train, so the cache is written and read as on the real data."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 80), ("validation", 20), ("test", 20)):
        images, shapes, dark = [], [], []
        for _ in range(n):
            pixels = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels, "RGBA").save(buf, format="PNG")
            images.append(buf.getvalue())
            shapes.append(str(rng.integers(0, 3)))
            dark.append(int(pixels[..., :3].mean() < 128))
        table = pa.table({"image": pa.array(images, pa.binary()), "shape": shapes, "dark": dark})
        out[split] = work / "sources" / f"smoke_{split}.parquet"
        out[split].parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out[split])
    return out


def real_data(name: str, mf_rows: int, work: Path) -> dict[str, Path]:
    """The bundled data set's split files (from the user's data directory, where they are
    built once); MultiFashion's cut to ``mf_rows`` training rows and a tenth for the others."""
    import pyarrow.parquet as pq

    from hydranet.data.datasets import DATASETS, data_dir

    paths = DATASETS.get(name).prepare(data_dir(), {})
    if name != "multifashion":
        return {k: Path(v) for k, v in paths.items()}
    out = {}
    for split, path in paths.items():
        rows = mf_rows if split == "train" else max(mf_rows // 10, 1)
        out[split] = work / "sources" / f"multifashion_{split}_{rows}.parquet"
        if not out[split].is_file():
            out[split].parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(path).slice(0, rows), out[split])
    return out


# ------------------------------------------------------------------ decode
def _cache_files(data: Path) -> dict[str, int]:
    folder = data / "images"
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.npy"))}


def decode_child(parquet: str, size: int) -> None:
    """Runs in its own process: the image group's transform of one split, timed (with one read
    of every pixel, as the cached tensor is a memory map whose pages load when used)."""
    import pyarrow.parquet as pq

    from hydranet.data.datasets import data_dir
    from hydranet.features.image import ImageGroup, decoded_count

    table = pq.read_table(parquet, columns=["image"])
    group = ImageGroup("image", ["image"], size=size).finish()
    before = _cache_files(data_dir())
    t0 = time.perf_counter()
    x = group.transform(table)
    int(x.sum())
    seconds = time.perf_counter() - t0
    record = {
        "rows": table.num_rows,
        "seconds": seconds,
        "decoded": decoded_count(),
        "before": before,
        "after": _cache_files(data_dir()),
        "pid": os.getpid(),
    }
    print(json.dumps(record))


def decode_in_new_process(parquet: Path, size: int, data: Path) -> dict[str, Any]:
    env = dict(os.environ, HYDRANET_DATA_DIR=str(data))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(C.ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, __file__, "--decode-child", str(parquet), "--size", str(size)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"decode process failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_decode(name: str, train: Path, data: Path) -> dict[str, Any]:
    shutil.rmtree(data / "images", ignore_errors=True)
    load = os.getloadavg()[0]
    first = decode_in_new_process(train, SIZES[name], data)
    second = decode_in_new_process(train, SIZES[name], data)
    return {
        "kind": "decode",
        "dataset": name,
        "load": load,
        "nice": os.nice(0),
        "first": first,
        "second": second,
        # built once and reused: the same file (name = content key), not written again
        "same_file": bool(first["after"]) and first["after"] == second["after"] == second["before"],
        "git": C.git_commit(),
    }


# ------------------------------------------------------------------ training
def spec_for(name: str, paths: dict[str, Path], config: tuple, args, weights: Path, epochs: int):
    from hydranet.spec import Spec

    label, encoder, params, _ = config
    params = dict(params)
    if encoder == "mobilenet_v2":
        params["weights"] = str(weights)
    raw = {
        "name": f"throughput_{name}",
        "data": {k: str(v) for k, v in paths.items()},
        "features": [
            {
                "name": "image",
                "kind": "image",
                "columns": ["image"],
                "params": {"size": SIZES[name]},
            }
        ],
        "tasks": [{"name": t, "kind": k} for t, k in TASKS[name].items()],
        "model": {
            "architecture": "shared_bottom",
            "tower": [32],
            "encoders": {"image": {"name": encoder, "params": params}},
        },
        "train": {
            "epochs": epochs,
            "batch_size": BATCH[name],
            "lr": 1e-3,
            "seed": 0,
            "device": args.device,
            "threads": threads_of(config, args),
        },
    }
    return Spec.from_dict(raw, source=f"{name}: {label} (benchmark spec)")


def train_one(name: str, paths: dict[str, Path], config: tuple, args, weights: Path, work: Path):
    import torch

    from hydranet.features.image import decoded_count
    from hydranet.train import transfer

    label = config[0]
    threads = threads_of(config, args)
    data = work / "data"
    if label == "mobilenet_v2 frozen":  # the one-time embedding, measured from scratch
        shutil.rmtree(data / "embeddings", ignore_errors=True)
    spec = spec_for(name, paths, config, args, weights, args.epochs)
    # the trainer does not report the one-time embedding apart from its epochs: time the call
    real, spent = transfer.encode_frozen, []

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = real(*a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    decoded = decoded_count()
    transfer.encode_frozen = timed
    try:
        run, seconds = C.train_fresh(spec, work / "runs" / _slug(name, label, threads))
    finally:
        transfer.encode_frozen = real
        torch.set_num_threads(args.threads)
    first_task = next(iter(TASKS[name]))
    # the saved model is rebuilt frozen as its spec says: the last epoch's state, to count
    transfer.set_epoch(run.model, args.epochs - 1)
    return {
        "kind": "train",
        "dataset": name,
        "config": label,
        "threads": threads,
        "load": load,
        "nice": os.nice(0),
        "epochs": [r["rows_per_s"] for r in run.metrics_log if r.get("rows_per_s")],
        "rows_per_s": C.mean_rows_per_s(run),
        "embed_seconds": sum(spent),
        "decoded": decoded_count() - decoded,
        "seconds": seconds,
        "trainable": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        "accuracy": run.final_metrics["test"][first_task].get("accuracy"),
        "git": C.git_commit(),
    }


def _slug(name: str, label: str, threads: int) -> str:
    words = "".join(ch if ch.isalnum() else "_" for ch in label)
    return f"{name}_{words}_t{threads}"


# ------------------------------------------------------------------ report
def _key(r: dict[str, Any]) -> tuple:
    return (r["kind"], r["dataset"], r.get("config"), r.get("threads"))


def render(records: list[dict[str, Any]], args, command: str, rows: dict[str, dict]) -> str:
    decode_rows = []
    for r in (r for r in records if r["kind"] == "decode"):
        a, b = r["first"], r["second"]
        size = SIZES[r["dataset"]]
        decode_rows.append(
            [
                r["dataset"],
                f"{a['rows']:,} × {size} px",
                f"{a['rows'] / a['seconds']:,.0f} ({a['decoded']:,} decoded, {a['seconds']:.2f} s)",
                f"{b['rows'] / b['seconds']:,.0f} ({b['decoded']:,} decoded, {b['seconds']:.2f} s)",
                "yes" if r["same_file"] else "**no**",
                f"{r['load']:.1f}",
            ]
        )
    decode = C.markdown_table(
        [
            "data set",
            "training split",
            "1st process: images/s (decode + cache write)",
            "2nd process: images/s (cache hit)",
            "same cache file (path, mtime)",
            "load",
        ],
        decode_rows,
    )
    train_rows = []
    for r in (r for r in records if r["kind"] == "train"):
        n = rows.get(r["dataset"], {})
        embedded = sum(n.values()) if n else None
        embed = ""
        if r["embed_seconds"] >= 0.05 or r["config"].startswith("mobilenet_v2 frozen"):
            embed = f"{r['embed_seconds']:.1f} s"
            if embedded and r["config"] == "mobilenet_v2 frozen":
                embed += f" ({embedded / r['embed_seconds']:,.0f} images/s)"
        acc = r["accuracy"]
        train_rows.append(
            [
                r["dataset"],
                r["config"],
                r["threads"],
                f"{r['trainable']:,}",
                " / ".join(f"{v:,.0f}" for v in r["epochs"]),
                f"{r['rows_per_s']:,.0f}" if r["rows_per_s"] else "",
                embed,
                f"{r['decoded']:,}",
                f"{r['seconds']:.0f}",
                "" if acc is None else f"{acc:.3f}",
                f"{r['load']:.1f}",
            ]
        )
    nice = sorted({r.get("nice", 0) for r in records})
    niceness = (
        f" The measuring processes ran at niceness {', '.join(map(str, nice))} (other jobs first)."
        if nice != [0]
        else ""
    )
    first_tasks = ", ".join(f"{d}: {next(iter(TASKS[d]))}" for d in rows)
    train = C.markdown_table(
        [
            "data set",
            "encoder",
            "threads",
            "trainable parameters",
            "images/s per epoch",
            "mean images/s",
            "one-time embedding",
            "images decoded in the run",
            "s per run",
            "test accuracy (first task)",
            "load",
        ],
        train_rows,
    )
    summary = []
    for d in rows:
        by = {
            r["config"]: r
            for r in records
            if r["kind"] == "train" and r["dataset"] == d and r["threads"] == args.threads
        }
        frozen, full = by.get("mobilenet_v2 frozen"), by.get("mobilenet_v2 full fine-tune")
        partial, cnn = by.get("mobilenet_v2 last 2 blocks"), by.get("cnn, augment")
        if not (frozen and full and partial and cnn):
            continue
        summary.append(
            f"- {d}: a full MobileNetV2 fine-tune trains {full['rows_per_s']:,.0f} images/s, "
            f"its last 2 blocks {partial['rows_per_s']:,.0f} "
            f"({partial['rows_per_s'] / full['rows_per_s']:.1f}×), the cnn from scratch "
            f"{cnn['rows_per_s']:,.0f} ({cnn['rows_per_s'] / full['rows_per_s']:.1f}×); frozen, "
            f"one embedding pass of {frozen['embed_seconds']:.1f} s replaces the encoder in "
            f"every epoch, and the whole frozen run took {frozen['seconds']:.0f} s against "
            f"{full['seconds']:.0f} s for the full fine-tune ({by.get('mobilenet_v2 frozen, embeddings cached', frozen)['seconds']:.0f} s "
            "with the embeddings cached)."
        )
    sizes = "; ".join(
        f"{d}: " + ", ".join(f"{k} {v:,}" for k, v in n.items()) for d, n in rows.items()
    )
    return "\n".join(
        [
            "## Images: the decode cache and training images/s, frozen against fine-tuned",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            f"Rows per split: {sizes}. The image group alone (one column, so a row is an image), "
            f"a shared-bottom trunk, tower [32], {args.epochs} epochs, Adam at 1e-3 (encoders "
            "with pretrained weights at 0.1 × that), batch 128 (emoji) or 256 (MultiFashion). "
            "MobileNetV2 has torchvision's ImageNet weights. 'load' is the 1-minute load "
            "average when the measurement started: the two cores are shared with other "
            "engineers' jobs, so the absolute figures are noisy; compare rows measured at a "
            f"similar load.{niceness}",
            "",
            "### The decode cache, across processes",
            "",
            "Each column is a separate Python process running the image group's `transform` on "
            "the training split (timed: the transform and one read of every pixel); the first "
            "starts with an empty cache. Decoding runs on up to 8 Pillow threads whatever "
            "`--threads` says. 'Same cache file': the second process found the file the first "
            "wrote, under the same name (the key is the images' content) and mtime, and wrote "
            "nothing.",
            "",
            decode,
            "",
            "### Training",
            "",
            "images/s is the trainer's rows/s of each epoch (metrics.jsonl: the training steps, "
            "not the validation pass). 'Images decoded in the run' is `decoded_count()` over "
            "the whole run: the training split comes from the cache the decode step wrote, so "
            "the first run of a data set decodes only its validation and test splits, once, "
            "however many epochs, and later runs decode nothing. 'mobilenet_v2 frozen' trains "
            "on embeddings computed once before the first epoch (the one-time embedding, of "
            "every split, empty embedding cache); the run after it finds them cached. 'last 2 "
            "blocks' unfreezes MobileNetV2's last 2 of 19 blocks from epoch 1 "
            "(`unfreeze_after = 0, unfreeze_blocks = 2`); 'full fine-tune' is `freeze = false`. "
            f"Test accuracy is of the first task ({first_tasks}), after so few epochs only a "
            "sanity check.",
            "",
            train,
            "",
            *summary,
        ]
    )


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["emoji", "multifashion"])
    p.add_argument("--mf-rows", type=int, default=10_000, help="MultiFashion training rows")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="MobileNetV2 .pth (default: where `hydranet fetch-weights mobilenet_v2` puts it)",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--decode-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.decode_child is not None:
        decode_child(args.decode_child, args.size)
        return {}
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, SECTION)
    data = work / "data"
    if args.smoke:
        args.datasets, args.epochs = ["smoke"], 1
    sources = {
        d: smoke_data(work) if d == "smoke" else real_data(d, args.mf_rows, work)
        for d in args.datasets
    }
    weights = args.weights
    if weights is None and args.smoke:
        weights = _random_weights(work)
    elif weights is None:
        from hydranet.weights import weights_dir

        weights = weights_dir("mobilenet_v2") / MOBILENET_FILE
    import pyarrow.parquet as pq

    rows = {
        d: {k: pq.read_metadata(v).num_rows for k, v in paths.items()}
        for d, paths in sources.items()
    }
    log = work / "results.jsonl"
    records = C.read_jsonl(log) if log.exists() else []
    done = {_key(r) for r in records}
    if not args.report_only:
        previous = os.environ.get("HYDRANET_DATA_DIR")
        os.environ["HYDRANET_DATA_DIR"] = str(data)
        try:
            for d, paths in sources.items():
                todo: list[tuple[tuple, Any]] = [(("decode", d, None, None), None)]
                todo += [(("train", d, c[0], threads_of(c, args)), c) for c in CONFIGS]
                for key, config in todo:
                    if key in done:
                        continue
                    if config is None:
                        rec = measure_decode(d, paths["train"], data)
                    else:
                        rec = train_one(d, paths, config, args, weights, work)
                    print(json.dumps(rec), file=sys.stderr)
                    C.append_jsonl(log, rec)
                    records.append(rec)
                    done.add(key)
        finally:
            if previous is None:
                os.environ.pop("HYDRANET_DATA_DIR", None)
            else:
                os.environ["HYDRANET_DATA_DIR"] = previous
    wanted = set(args.datasets)
    records = [r for r in records if r["dataset"] in wanted]
    command = C.report_command(argv, args.report_only, "table re-rendered from results.jsonl")
    path = C.results_path(args)
    C.ensure_about(path)
    C.write_section(path, SECTION, render(records, args, command, rows))
    return {"records": records, "rows": rows}


def _random_weights(work: Path) -> Path:
    """A freshly initialised MobileNetV2 for smoke runs (the real file is 14 MB and fetched)."""
    import torch
    from torchvision.models import mobilenet_v2

    path = work / "mobilenet_v2_random.pth"
    if not path.is_file():
        torch.save(mobilenet_v2(weights=None).state_dict(), path)
    return path


if __name__ == "__main__":
    C.run_main(main)
