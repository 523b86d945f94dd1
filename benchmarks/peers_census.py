"""hydranet's MMoE against DeepCTR-Torch 0.3.0's MMOE on Census-Income, side by side in one process.

Both get the same prepared features: hydranet's preprocessor output for the
census group-1 spec (categorical columns as label-encoded ints, numeric
columns log1p'd where the example says so and standardized), the same sizes
(8 experts x [16], linear gates, towers [8], embedding 4), batch 1024, Adam
lr 1e-3 with no schedule, the same number of epochs, the same torch thread
count, and no early stopping. Training throughput counts the training epochs
only (DeepCTR: a callback's epoch begin/end; hydranet: the trainer's own
per-epoch rows/s, which times the loader loop and excludes validation and
checkpoints). Test AUCs for both come from ``hydranet.tasks.auc`` on
whole-split predictions (DeepCTR's printed metrics average per batch).

DeepCTR-Torch is in the ``bench`` extra (``pip install -e '.[bench]'``). Its
``deepctr_torch.utils`` imports ``requests`` (not a declared dependency) and
starts a thread that asks PyPI for newer versions; :func:`import_deepctr`
gives it a stub ``requests`` whose calls fail at once, so the benchmark makes
no network call and needs no ``requests``. Nothing in site-packages is edited.

    .venv/bin/python benchmarks/peers_census.py --epochs 5
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

SECTION = "peers-census"
TASKS = ("income", "marital")
SIZES = {"num_experts": 8, "expert_hidden": [16], "tower": [8], "embedding_dim": 4}


def import_deepctr():
    """``deepctr_torch`` with its PyPI version check disarmed (see the module docstring)."""
    stub = types.ModuleType("requests")

    def _offline(*_a, **_k):
        raise ConnectionError("network disabled by benchmarks/peers_census.py")

    stub.get = _offline  # type: ignore[attr-defined]
    stub.codes = types.SimpleNamespace(ok=200)  # type: ignore[attr-defined]
    saved = sys.modules.get("requests")
    sys.modules["requests"] = stub
    try:
        import deepctr_torch
        from deepctr_torch.callbacks import Callback
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models.multitask import MMOE
    finally:
        if saved is not None:
            sys.modules["requests"] = saved
        else:
            sys.modules.pop("requests", None)
    return deepctr_torch, Callback, DenseFeat, SparseFeat, MMOE


def hydranet_spec(data: dict, args):
    spec = C.census_spec(
        data,
        "mmoe",
        {"num_experts": SIZES["num_experts"], "expert_hidden": SIZES["expert_hidden"]},
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        patience=None,
    )
    raw = spec.to_dict()
    raw["train"].update(lr=1e-3, schedule={"kind": "constant"}, batch_size=args.batch_size)
    raw["model"].update(tower=SIZES["tower"], embedding_dim=SIZES["embedding_dim"])
    return type(spec).from_dict(raw)


def run_hydranet(spec, work: Path, test, tasks, args) -> dict[str, Any]:
    import hydranet
    from hydranet.evaluate.inference import predict_arrays
    from hydranet.tasks import auc

    t0 = time.perf_counter()
    run = hydranet.train(spec, work, progress=False)
    wall = time.perf_counter() - t0
    log = run.metrics_log
    rates = [r["rows_per_s"] for r in log]
    model = run.model

    def infer():
        return predict_arrays(
            model, test.data.cat, test.data.num, tasks, args.eval_batch_size, args.device
        )[0]

    preds, infer_rates = _timed_inference(infer, len(test), args.repeats)
    return {
        "train_rows_per_s": rates,
        "train_seconds": sum(r["seconds"] for r in log),
        "wall_seconds": wall,
        "infer_rows_per_s": infer_rates,
        "auc": {t: auc(preds[t], test.labels[t]) for t in TASKS},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_deepctr(prepared, args) -> dict[str, Any]:
    import torch

    from hydranet.tasks import auc

    _, Callback, DenseFeat, SparseFeat, MMOE = import_deepctr()
    _tasks, prep, splits = prepared
    train, test = splits["train"], splits["test"]
    n_cat, n_num = train.data.cat.shape[1], train.data.num.shape[1]
    columns = [
        SparseFeat(f"c{j}", vocabulary_size=int(card), embedding_dim=SIZES["embedding_dim"])
        for j, card in enumerate(prep.cardinalities)
    ] + [DenseFeat(f"n{j}", 1) for j in range(n_num)]

    def inputs(split) -> dict[str, np.ndarray]:
        # float32 throughout: DeepCTR concatenates all inputs into one array and casts
        # batches with .float(); float32 codes are exact for these vocabularies.
        cat = split.data.cat.numpy().astype(np.float32)
        num = split.data.num.numpy().astype(np.float32)
        x = {f"c{j}": cat[:, j] for j in range(n_cat)}
        x.update({f"n{j}": num[:, j] for j in range(n_num)})
        return x

    x_train, x_test = inputs(train), inputs(test)
    y_train = np.stack([train.labels[t] for t in TASKS], axis=1).astype(np.float32)
    model = MMOE(
        columns,
        num_experts=SIZES["num_experts"],
        expert_dnn_hidden_units=tuple(SIZES["expert_hidden"]),
        gate_dnn_hidden_units=(),  # linear gates, as in the paper and in hydranet
        tower_dnn_hidden_units=tuple(SIZES["tower"]),
        task_types=("binary", "binary"),
        task_names=TASKS,
        seed=args.seed,
        device=args.device,
    )
    model.compile(
        torch.optim.Adam(model.parameters(), lr=1e-3),
        loss=["binary_crossentropy", "binary_crossentropy"],
        metrics=None,
    )

    class EpochTimer(Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)

    timer = EpochTimer()
    t0 = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=[timer],
    )
    wall = time.perf_counter() - t0
    n = len(train)

    def infer():
        return model.predict(dict(x_test), batch_size=args.eval_batch_size)

    preds, infer_rates = _timed_inference(infer, len(test), args.repeats)
    return {
        "train_rows_per_s": [n / s for s in timer.seconds],
        "train_seconds": sum(timer.seconds),
        "wall_seconds": wall,
        "infer_rows_per_s": infer_rates,
        "auc": {t: auc(preds[:, i], test.labels[t]) for i, t in enumerate(TASKS)},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _timed_inference(fn, n_rows: int, repeats: int):
    rates, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        rates.append(n_rows / (time.perf_counter() - t0))
    return out, rates


def compare(spec, prepared, work: Path, args, threads: int) -> dict[str, Any]:
    """Both models at one torch thread count: DeepCTR first, then hydranet."""
    import torch

    tasks, _prep, splits = prepared
    torch.set_num_threads(threads)
    spec = type(spec).from_dict(
        {**spec.to_dict(), "train": {**spec.to_dict()["train"], "threads": threads}}
    )
    # DeepCTR first, then hydranet: if the order favours anyone it is hydranet, by
    # one-time start-up costs, which are not timed.
    deep = run_deepctr(prepared, args)
    med = statistics.median
    print(
        f"[{threads} threads] deepctr-torch: {med(deep['train_rows_per_s']):,.0f} rows/s, AUC {deep['auc']}",
        flush=True,
    )
    hyd = run_hydranet(spec, work / f"hydranet_mmoe_t{threads}", splits["test"], tasks, args)
    print(
        f"[{threads} threads] hydranet:      {med(hyd['train_rows_per_s']):,.0f} rows/s, AUC {hyd['auc']}",
        flush=True,
    )
    return {
        "deepctr": deep,
        "hydranet": hyd,
        "ratio_train": med(hyd["train_rows_per_s"]) / med(deep["train_rows_per_s"]),
        "ratio_infer": med(hyd["infer_rows_per_s"]) / med(deep["infer_rows_per_s"]),
        "met": med(hyd["train_rows_per_s"]) >= 3.0 * med(deep["train_rows_per_s"])
        and all(hyd["auc"][t] >= deep["auc"][t] - 1e-4 for t in TASKS),
    }


def render(
    results: dict[int, dict[str, Any]], n_train: int, n_test: int, args, command: str
) -> str:
    med = statistics.median
    rows = []
    for threads, res in results.items():
        deep, hyd = res["deepctr"], res["hydranet"]
        for name, r in (("DeepCTR-Torch 0.3.0 `MMOE`", deep), ("hydranet `mmoe`", hyd)):
            rows.append(
                [
                    threads,
                    name,
                    f"{r['parameters']:,}",
                    f"{med(r['train_rows_per_s']):,.0f}",
                    f"{r['train_seconds']:.1f}",
                    f"{med(r['infer_rows_per_s']):,.0f}",
                    f"{r['auc']['income']:.4f}",
                    f"{r['auc']['marital']:.4f}",
                ]
            )
        rows.append(
            [
                threads,
                "**ratio hydranet / DeepCTR**",
                "",
                f"**{res['ratio_train']:.1f}×**",
                "",
                f"**{res['ratio_infer']:.1f}×**",
                f"{hyd['auc']['income'] - deep['auc']['income']:+.4f}",
                f"{hyd['auc']['marital'] - deep['auc']['marital']:+.4f}",
            ]
        )
    table = C.markdown_table(
        [
            "threads",
            "model",
            "parameters",
            "train rows/s (median epoch)",
            f"train s ({args.epochs} epochs)",
            f"inference rows/s (batch {args.eval_batch_size:,})",
            "test income AUC",
            "test marital AUC",
        ],
        rows,
    )
    per_epoch = "; ".join(
        f"{t} threads: DeepCTR {', '.join(f'{v:,.0f}' for v in r['deepctr']['train_rows_per_s'])}, "
        f"hydranet {', '.join(f'{v:,.0f}' for v in r['hydranet']['train_rows_per_s'])}"
        for t, r in results.items()
    )
    verdicts = "; ".join(
        f"{t} threads: {'met' if r['met'] else 'NOT met'}" for t, r in results.items()
    )
    first = next(iter(results))
    return (
        C.provenance(command, device=args.device, threads=first, extra=("deepctr-torch",))
        + f"\nSame process, {n_train:,} training and {n_test:,} test rows, "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr 1e-3 constant, seed {args.seed}, "
        "8 experts × [16], linear gates, towers [8], embedding 4; DeepCTR's other arguments at their "
        "defaults (embedding init std 1e-4, L2 1e-5 on embeddings, loss summed over the batch). "
        "AUCs by `hydranet.tasks.auc` on whole-split predictions for both. Per-epoch train rows/s: "
        f"{per_epoch}.\n\n"
        + table
        + "\n\n**Target (≥ 3× DeepCTR-Torch training throughput with equal or better AUC): "
        f"{verdicts}.**"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs for both (default 5)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-batch-size", type=int, default=8192, help="inference batch for both")
    p.add_argument(
        "--repeats", type=int, default=3, help="inference passes timed (median reported)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="+",
        default=None,
        help="run the whole comparison at each of these torch thread counts (default: --threads)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.repeats = 1, 1
    try:
        import_deepctr()
    except ImportError as e:
        raise SystemExit(
            f"deepctr-torch is not installed ({e}); pip install -e '.[bench]'"
        ) from None
    counts = args.thread_counts or [args.threads]
    C.setup_torch(counts[0], args.device)
    command = C.command_line(argv)
    work = C.work_dir(args, "peers_census")
    for old in work.glob("hydranet_mmoe*"):
        shutil.rmtree(old)  # this script's own earlier runs
    data = C.census_data(args.smoke, work)

    from hydranet.train.prepare import prepare, resolve_spec

    spec = resolve_spec(hydranet_spec(data, args))
    prepared = prepare(spec)
    splits = prepared[2]
    results = {t: compare(spec, prepared, work, args, t) for t in counts}
    body = render(results, len(splits["train"]), len(splits["test"]), args, command)
    print(C.write_section(_results(args), SECTION, body))
    return {**results[counts[0]], "by_threads": results}


def _results(args) -> Path | None:
    path = C.results_path(args)
    C.ensure_about(path)
    return path


if __name__ == "__main__":
    main()
