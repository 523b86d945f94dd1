"""MultiFashion (the MultiMNIST protocol of Sener & Koltun, NeurIPS 2018, on Fashion-MNIST):
one network per task against shared-bottom, MMoE and shared-bottom trained with MGDA-UB,
left and right test accuracy over several seeds.

The settings are examples/multifashion.toml (a ``cnn`` image encoder, channels [16, 32, 64]
average-pooled to a 2x2 grid, no augmentation, Adam 1e-3, batch 256, early stopping on the
validation loss) with the trunk, the balancer, the epochs and the seed replaced.
``single_task`` is one run per task, each with only its own task (its own CNN, nothing
shared), as the paper's single-task baseline; the ``single_task`` *architecture* would still
share the image encoder between the tasks.

On 2 shared CPU cores the full 54,000 training rows x 5 runs x 3 seeds do not fit in an hour,
so ``--train-rows`` (default 10,000) keeps the first rows of the training split, written to a
Parquet file in the work directory; validation (6,000) and test (10,000) are the full splits.
Each (model, seed, epochs, training rows) result is appended to ``<out>/results.jsonl`` as soon
as it exists and is skipped when the same command runs again; ``--report-only`` writes the
tables (one per epochs and training rows) from what is there.

    .venv/bin/python benchmarks/multifashion.py --seeds 3 --threads 1
    .venv/bin/python benchmarks/multifashion.py --seeds 3 --threads 1 --epochs 20
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTION = "multifashion"
TASKS = ("left", "right")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multifashion.toml"
# model -> (architecture, trunk params, balance method, other [model] keys); tower [32] and the
# encoder are the example's. Hidden widths 64 everywhere so the trunks are about the same size.
MMOE = {"num_experts": 4, "expert_hidden": [64]}
MODELS: dict[str, tuple[str, dict[str, Any], str, dict[str, Any]]] = {
    "single_task": ("single_task", {"hidden": [64]}, "ew", {}),
    "shared_bottom": ("shared_bottom", {"hidden": [64]}, "ew", {}),
    "mmoe": ("mmoe", MMOE, "ew", {}),
    # the gated trunks start their towers' output layers at 0.1x (chosen on census, binary
    # tasks); 10-way softmax heads that small learn slowly and early stopping ends them first
    "mmoe_head1": ("mmoe", MMOE, "ew", {"head_init_scale": 1.0}),
    "mgda_ub": ("shared_bottom", {"hidden": [64]}, "mgda_ub", {}),
}
LABELS = {
    "single_task": "one network per task",
    "shared_bottom": "shared-bottom, equal weights",
    "mmoe": "MMoE, 4 experts, equal weights",
    "mmoe_head1": "MMoE as above, output layers at PyTorch's init: `head_init_scale = 1.0`",
    "mgda_ub": "shared-bottom, MGDA-UB",
}
REFERENCE = (
    "Reference protocol: O. Sener and V. Koltun, *Multi-Task Learning as Multi-Objective "
    "Optimization*, NeurIPS 2018 (arXiv:1810.04650), MultiMNIST left/right digit accuracy for "
    "single-task, uniform scaling, Kendall et al., GradNorm and MGDA-UB. Their figures are on "
    "MNIST digits with the full training set and a LeNet-style network, so they are not "
    "comparable number for number with Fashion-MNIST items here; see the paper for them (the "
    "table text could not be retrieved offline, and no figure is quoted from memory)."
)


def multifashion_data(args, scratch: Path) -> dict[str, Any]:
    """The ``[data]`` table: the bundled splits with a training subset of ``--train-rows``,
    or for smoke runs a tiny random table of 28 px grey PNGs (offline, seconds)."""
    import pyarrow.parquet as pq

    if args.smoke:
        return _smoke_data(scratch)
    from hydranet.data.sources import resolve_dataset
    from hydranet.spec_tables import DataSpec

    full = resolve_dataset(DataSpec(dataset="multifashion"))
    subset = scratch / f"train_first_{args.train_rows}.parquet"
    if not subset.exists():
        table = pq.read_table(full.train)
        if args.train_rows > table.num_rows:
            raise SystemExit(f"--train-rows {args.train_rows}: the split has {table.num_rows}")
        pq.write_table(table.slice(0, args.train_rows), subset)
    rows = pq.ParquetFile(subset).metadata.num_rows
    assert rows == args.train_rows, (subset, rows)
    return {"dataset": "multifashion", "train": str(subset)}


def _smoke_data(scratch: Path) -> dict[str, Any]:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 96), ("validation", 32), ("test", 32)):
        left, right = rng.integers(0, 10, n), rng.integers(0, 10, n)
        images = []
        for a, b in zip(left, right, strict=True):
            pixels = rng.integers(0, 64, size=(28, 28), dtype=np.uint8)
            pixels[:14, :14] += np.uint8(19 * a)  # a learnable hint of each label
            pixels[14:, 14:] += np.uint8(19 * b)
            buf = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buf, format="PNG")
            images.append(buf.getvalue())
        table = pa.table(
            {
                "image": pa.array(images, pa.binary()),
                "left": [str(v) for v in left],
                "right": [str(v) for v in right],
            }
        )
        paths[split] = scratch / f"multifashion_smoke_{split}.parquet"
        pq.write_table(table, paths[split])
    return {k: str(v) for k, v in paths.items()}


def build_spec(data: dict, model: str, args, seed: int, tasks: tuple[str, ...] = TASKS):
    from hydranet.spec import Spec

    architecture, params, method, overrides = MODELS[model]
    raw = Spec.load(EXAMPLE).to_dict()
    raw["name"] = f"multifashion_{model}_{'_'.join(tasks)}_s{seed}"
    raw["data"] = {**data}
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in tasks]
    raw["model"]["architecture"] = architecture
    raw["model"]["params"] = dict(params)
    raw["model"].update(overrides)
    raw["balance"] = {"method": method}
    raw["train"].update(epochs=args.epochs, seed=seed, device=args.device, threads=args.threads)
    if args.smoke:
        raw["model"]["encoders"]["image"]["params"]["channels"] = [4, 4, 8]
    return Spec.from_dict(raw, source=f"{EXAMPLE} (benchmark overrides)")


def run_one(data: dict, model: str, args, seed: int, work: Path) -> dict[str, Any]:
    # single_task: one run per task, each network seeing only its own labels
    groups = [(t,) for t in TASKS] if model == "single_task" else [TASKS]
    test: dict[str, float] = {}
    parameters = 0
    seconds = 0.0
    best_epochs: list[int] = []
    speeds: list[float] = []
    for tasks in groups:
        spec = build_spec(data, model, args, seed, tasks)
        run, s = C.train_fresh(spec, work / "runs" / f"{spec.name}_e{args.epochs}")
        final = run.final_metrics
        test.update({t: final["test"][t]["accuracy"] for t in tasks})
        parameters += sum(p.numel() for p in run.model.parameters())
        seconds += s
        best_epochs.append(final["best_epoch"])
        speed = C.mean_rows_per_s(run)
        if speed:
            speeds.append(speed)
    return {
        "model": model,
        "seed": seed,
        "test": test,
        "parameters": parameters,
        "best_epoch": best_epochs,
        "rows_per_s": sum(speeds) / len(speeds) if speeds else None,
        "seconds": seconds,
        "train_rows": None if args.smoke else args.train_rows,
        "epochs": args.epochs,
        "git": C.git_commit(),
    }


def _mean_acc(record: dict[str, Any]) -> float:
    return 100.0 * sum(record["test"][t] for t in TASKS) / len(TASKS)


def _budget(record: dict[str, Any]) -> tuple[int, int]:
    return record["epochs"], record.get("train_rows") or 0


def _table(records: list[dict[str, Any]]) -> str:
    single = {r["seed"]: r for r in records if r["model"] == "single_task"}
    rows = []
    for model in MODELS:
        rs = sorted((r for r in records if r["model"] == model), key=lambda r: r["seed"])
        if not rs:
            continue
        row: list[Any] = [f"`{model}` ({LABELS[model]})", len(rs), f"{rs[0]['parameters']:,}"]
        for t in TASKS:
            mean, std = C.mean_std([100.0 * r["test"][t] for r in rs])
            row.append(f"{mean:.2f} ± {std:.2f}")
        paired = [_mean_acc(r) - _mean_acc(single[r["seed"]]) for r in rs if r["seed"] in single]
        row.append(f"{C.mean_std(paired)[0]:+.2f}" if paired else "")
        row.append(f"{C.mean_std([r['seconds'] for r in rs])[0]:.0f}")
        row.append(" / ".join("+".join(str(e) for e in r["best_epoch"]) for r in rs))
        rows.append(row)
    table = C.markdown_table(
        [
            "model",
            "seeds",
            "parameters",
            "test left accuracy %",
            "test right accuracy %",
            "mean of the two − single task, paired by seed (points)",
            "s per run",
            "best epoch per seed",
        ],
        rows,
    )
    # a best epoch at the cap means the validation loss was still falling when training stopped
    at_cap = sum(e == r["epochs"] for r in records for e in r["best_epoch"])
    n_runs = sum(len(r["best_epoch"]) for r in records)
    total = sum(r["seconds"] for r in records)
    return (
        f"{table}\n\nTraining time of these rows: {total:,.0f} s. {at_cap} of {n_runs} training "
        "runs had their best validation loss at the last epoch (still learning when stopped)."
    )


def render(records: list[dict[str, Any]], args, command: str) -> str:
    tables = []
    for epochs, train_rows in sorted({_budget(r) for r in records}):
        rows = "a smoke table" if not train_rows else f"the first {train_rows:,} training rows"
        tables += [
            f"**At most {epochs} epochs, {rows}:**",
            "",
            _table([r for r in records if _budget(r) == (epochs, train_rows)]),
            "",
        ]
    return "\n".join(
        [
            "## MultiFashion: one network per task, shared-bottom, MMoE and MGDA-UB",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            "The MultiMNIST protocol of Sener & Koltun on Fashion-MNIST (`dataset = "
            '"multifashion"`: two items on one 28x28 picture, tasks left and right, 10 classes '
            "each). Settings: examples/multifashion.toml (`cnn` encoder, channels [16, 32, 64], "
            "out_dim 64, average-pooled to a 2x2 grid (`pool = 2`: global pooling forgets "
            "which item is left), no augmentation; trunk hidden 64, towers [32]; Adam 1e-3, "
            "batch 256; early stopping on the validation loss, patience 3, the best epoch's "
            "weights), with only the trunk, the balancer, the epochs and the seed replaced. "
            "A subset of the 54,000 training rows (CPU time); validation and test are the full "
            "6,000 and 10,000 rows. `single_task` is two runs, one per task with its own CNN "
            "(its parameters and seconds are the two runs' sums; best epochs left+right); the "
            "others are one network whose CNN and trunk the two tasks share. One table per "
            "training budget: the command above with that table's `--epochs` (default 10) "
            "and `--train-rows` (default 10,000); the results of each are kept. A model whose "
            "rows are the same in two budgets had its best validation loss before the smaller "
            "cap and early stopping ended the longer run too (same seed, same path).",
            "",
            *tables,
            REFERENCE,
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0], threads=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-rows", type=int, default=10_000)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = min(args.seeds, 1), 1
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, SECTION)
    log = work / "results.jsonl"
    records = C.read_jsonl(log)
    if not args.report_only:
        data = multifashion_data(args, work)
        budget = (args.epochs, 0 if args.smoke else args.train_rows)
        C.run_missing(
            records,
            log,
            [(model, seed) for seed in range(args.seeds) for model in args.models],
            run=lambda model, seed: run_one(data, model, args, seed, work),
            done=lambda job, r: (r["model"], r["seed"]) == job and _budget(r) == budget,
            line=lambda r: (
                f"{r['model']} seed {r['seed']}: "
                + ", ".join(f"{t} {r['test'][t]:.4f}" for t in TASKS)
                + f" ({r['seconds']:.0f} s)"
            ),
        )
    command = C.report_command(argv, args.report_only, "re-rendered")
    body = render(records, args, command)
    results = C.results_path(args)
    C.ensure_about(results)
    print(C.write_section(results, SECTION, body))
    return {"records": records}


if __name__ == "__main__":
    C.run_main(main)
