"""hydranet's MMoE against DeepCTR-Torch 0.3.0's MMOE on Census-Income, side by side in one process.

Both get the same prepared features: hydranet's preprocessor output for the
census group-1 spec (categorical columns as label-encoded ints, numeric
columns log1p'd where the example says so and standardized), the same sizes
(8 experts x [16], linear gates, towers [8], embedding 4), batch 1024, Adam
lr 1e-3 with no schedule, the same number of epochs, the same torch thread
count, and no early stopping. The two train in turn, epoch by epoch (the order
alternating), so that on a shared machine both see the same load; only the
training epochs are timed (DeepCTR: its own ``fit``, one epoch per call, timed
by a callback; hydranet: its own ``Trainer.train_step`` in ``Trainer.fit``'s
epoch loop). Test AUCs for both come from ``hydranet.tasks.auc`` on whole-split
predictions (DeepCTR's printed metrics average per batch).

DeepCTR-Torch is in the ``bench`` extra (``pip install -e '.[bench]'``). Its
``deepctr_torch.utils`` imports ``requests`` (not a declared dependency) and
starts a thread that asks PyPI for newer versions; :func:`import_deepctr`
gives it a stub ``requests`` whose calls fail at once, so the benchmark makes
no network call and needs no ``requests``. Nothing in site-packages is edited.

    .venv/bin/python benchmarks/peers_census.py --epochs 5
    .venv/bin/python benchmarks/peers_census.py --device cuda --mode cuda-graph   # the GPU path

``--mode`` picks hydranet's step: ``auto`` (the trainer's default: one CUDA graph
per step on CUDA when the run allows it, plain steps on CPU), ``eager`` (no
graph), ``cuda-graph`` (required: an error where it cannot be captured) or
``max-autotune`` (``torch.compile(mode="max-autotune")`` of the model, no graph).
On a GPU, run it once per mode to see which is faster; each run writes its own
section. The GPU target (issue 5): >= 2,000,000 training rows/s at batch 1024 on
one H100 with test income AUC >= 0.940.
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
MODES = {
    "auto": {},
    "eager": {"cuda_graph": "off"},
    "cuda-graph": {"cuda_graph": "on"},
    "max-autotune": {"cuda_graph": "off", "compile": "max-autotune"},
}
GPU_TARGET = {"rows_per_s": 2_000_000, "income_auc": 0.940}


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
        seed=0,  # replaced per seed in compare()
        device=args.device,
        threads=args.threads,
        patience=None,
    )
    raw = spec.to_dict()
    raw["train"].update(lr=1e-3, schedule={"kind": "constant"}, batch_size=args.batch_size)
    raw["train"].update(MODES[args.mode])
    raw["model"].update(tower=SIZES["tower"], embedding_dim=SIZES["embedding_dim"])
    return type(spec).from_dict(raw)


class HydranetSide:
    """hydranet's MMoE driven epoch by epoch through its own ``Trainer.train_step``.

    The epoch loop is :meth:`Trainer.fit`'s (``loader.set_epoch``, one ``train_step``
    per batch, rows / seconds), without the progress bar, validation and checkpoints
    that ``fit`` runs between epochs and does not time either.
    """

    name = "hydranet `mmoe`"

    def __init__(self, spec, prepared, out: Path, args):
        import torch

        from hydranet.train.trainer import Trainer

        self.tasks, prep, splits = prepared
        self.test, self.args = splits["test"], args
        torch.manual_seed(spec.train.seed)
        self.trainer = Trainer(spec, self.tasks, splits, prep, out, progress=False)
        self.trainer.model.train()
        self.model = self.trainer.model
        self.n = len(splits["train"])
        self.epoch = 0

    def train_epoch(self) -> float:
        tr = self.trainer
        tr.loader.set_epoch(self.epoch)
        t0 = time.perf_counter()
        rows = tr.run_epoch()  # waits for the device's kernels at its end
        self.epoch += 1
        return rows / (time.perf_counter() - t0)

    def predict(self) -> dict[str, np.ndarray]:
        from hydranet.evaluate.inference import predict_arrays

        d = self.test.data
        preds = predict_arrays(
            self.model, d.features, self.tasks, self.args.eval_batch_size, self.args.device
        )[0]
        return {t: preds[t] for t in TASKS}


class DeepCTRSide:
    """DeepCTR-Torch's ``MMOE`` trained with its own ``fit``, one epoch per call (the
    optimizer and its state carry over); an epoch is timed by a callback from its
    begin to its end, so the input concatenation ``fit`` does first is not counted."""

    name = "DeepCTR-Torch 0.3.0 `MMOE`"

    def __init__(self, prepared, args, seed: int):
        import torch

        _, Callback, DenseFeat, SparseFeat, MMOE = import_deepctr()
        _tasks, prep, splits = prepared
        train, self.test, self.args = splits["train"], splits["test"], args
        # the same inputs: the tabular shortcut's groups, categorical codes and numeric values
        feats = train.data.features
        n_cat, n_num = feats["categorical"].shape[1], feats["numeric"].shape[1]
        columns = [
            SparseFeat(f"c{j}", vocabulary_size=int(card), embedding_dim=SIZES["embedding_dim"])
            for j, card in enumerate(prep.groups["categorical"].cardinalities)
        ] + [DenseFeat(f"n{j}", 1) for j in range(n_num)]

        def inputs(split) -> dict[str, np.ndarray]:
            # float32 throughout: DeepCTR concatenates all inputs into one array and casts
            # batches with .float(); float32 codes are exact for these vocabularies.
            cat = split.data.features["categorical"].numpy().astype(np.float32)
            num = split.data.features["numeric"].numpy().astype(np.float32)
            x = {f"c{j}": cat[:, j] for j in range(n_cat)}
            x.update({f"n{j}": num[:, j] for j in range(n_num)})
            return x

        self.x_train, self.x_test = inputs(train), inputs(self.test)
        self.y_train = np.stack([train.labels[t] for t in TASKS], axis=1).astype(np.float32)
        self.n = len(train)
        self.model = MMOE(
            columns,
            num_experts=SIZES["num_experts"],
            expert_dnn_hidden_units=tuple(SIZES["expert_hidden"]),
            gate_dnn_hidden_units=(),  # linear gates, as in the paper and in hydranet
            tower_dnn_hidden_units=tuple(SIZES["tower"]),
            task_types=("binary", "binary"),
            task_names=TASKS,
            seed=seed,
            device=args.device,
        )
        self.model.compile(
            torch.optim.Adam(self.model.parameters(), lr=1e-3),
            loss=["binary_crossentropy", "binary_crossentropy"],
            metrics=None,
        )

        class EpochTimer(Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds = time.perf_counter() - self.t0

        self.timer = EpochTimer()

    def train_epoch(self) -> float:
        self.model.fit(
            dict(self.x_train),
            self.y_train,
            batch_size=self.args.batch_size,
            epochs=1,
            verbose=0,
            callbacks=[self.timer],
        )
        return self.n / self.timer.seconds

    def predict(self) -> dict[str, np.ndarray]:
        preds = self.model.predict(dict(self.x_test), batch_size=self.args.eval_batch_size)
        return {t: preds[:, i] for i, t in enumerate(TASKS)}


def run_interleaved(
    sides: list, epochs: int, repeats: int, n_test: int, labels
) -> list[dict[str, Any]]:
    """Epoch ``e`` of every side before epoch ``e + 1`` of any, the order alternating
    (A B, B A, ...), so that both see the same load on a shared machine; then
    ``repeats`` inference passes over the test split, interleaved the same way."""
    from hydranet.tasks import auc

    train = {s.name: [] for s in sides}
    infer = {s.name: [] for s in sides}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for e in range(epochs):
        for s in sides if e % 2 == 0 else sides[::-1]:
            train[s.name].append(s.train_epoch())
            print(f"  epoch {e + 1}: {s.name} {train[s.name][-1]:,.0f} rows/s", flush=True)
    for r in range(max(1, repeats)):
        for s in sides if r % 2 == 0 else sides[::-1]:
            t0 = time.perf_counter()
            preds[s.name] = s.predict()
            infer[s.name].append(n_test / (time.perf_counter() - t0))
    out = [
        {
            "train_rows_per_s": train[s.name],
            "train_seconds": sum(s.n / v for v in train[s.name]),
            "infer_rows_per_s": infer[s.name],
            "auc": {t: auc(preds[s.name][t], labels[t]) for t in TASKS},
            "parameters": sum(p.numel() for p in s.model.parameters()),
        }
        for s in sides
    ]
    # the seed's test AUCs in the log too: a run cut short (a time limit) keeps them
    for s, r in zip(sides, out, strict=True):
        aucs = ", ".join(f"{t} {r['auc'][t]:.4f}" for t in TASKS)
        print(f"  test AUC: {s.name} {aucs}", flush=True)
    return out


def compare(spec, prepared, work: Path, args, threads: int) -> dict[str, Any]:
    """Both models at one torch thread count, for each seed trained and timed epoch by
    epoch in turn; rows/s over every epoch of every seed, AUCs as means over seeds."""
    import torch

    _tasks, _prep, splits = prepared
    torch.set_num_threads(threads)
    per_seed = []
    for seed in range(args.seeds):
        raw = spec.to_dict()
        raw["train"].update(threads=threads, seed=seed)
        seeded = type(spec).from_dict(raw)
        deep = DeepCTRSide(prepared, args, seed)
        hyd = HydranetSide(seeded, prepared, work / f"hydranet_mmoe_t{threads}_s{seed}", args)
        print(f"[{threads} threads, seed {seed}]", flush=True)
        per_seed.append(
            run_interleaved(
                [deep, hyd], args.epochs, args.repeats, len(splits["test"]), splits["test"].labels
            )
        )
    d, h = (_pool([runs[i] for runs in per_seed]) for i in (0, 1))
    med = statistics.median
    ratio = med(h["train_rows_per_s"]) / med(d["train_rows_per_s"])
    auc_ok = {t: h["auc"][t] >= d["auc"][t] for t in TASKS}
    return {
        "deepctr": d,
        "hydranet": h,
        "ratio_train": ratio,
        "ratio_infer": med(h["infer_rows_per_s"]) / med(d["infer_rows_per_s"]),
        "auc_ok": auc_ok,
        "met": ratio >= 3.0 and all(auc_ok.values()),
    }


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "train_rows_per_s": [v for r in runs for v in r["train_rows_per_s"]],
        "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "infer_rows_per_s": [v for r in runs for v in r["infer_rows_per_s"]],
        "auc": {t: C.mean_std([r["auc"][t] for r in runs])[0] for t in TASKS},
        "auc_std": {t: C.mean_std([r["auc"][t] for r in runs])[1] for t in TASKS},
        "auc_per_seed": [r["auc"] for r in runs],
        "parameters": runs[0]["parameters"],
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
                    f"{r['auc']['income']:.4f} ± {r['auc_std']['income']:.4f}",
                    f"{r['auc']['marital']:.4f} ± {r['auc_std']['marital']:.4f}",
                ]
            )
        rows.append(
            [
                threads,
                "**ratio hydranet / DeepCTR**",
                "",
                f"**{res['ratio_train']:.2f}×**",
                "",
                f"**{res['ratio_infer']:.2f}×**",
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
            f"train s ({args.epochs} epochs, mean)",
            f"inference rows/s (batch {args.eval_batch_size:,})",
            f"test income AUC (mean ± std, {args.seeds} seeds)",
            "test marital AUC",
        ],
        rows,
    )
    per_epoch = "; ".join(
        f"{t} threads: DeepCTR {', '.join(f'{v:,.0f}' for v in r['deepctr']['train_rows_per_s'])}, "
        f"hydranet {', '.join(f'{v:,.0f}' for v in r['hydranet']['train_rows_per_s'])}"
        for t, r in results.items()
    )

    def verdict(t: int, r: dict[str, Any]) -> str:
        auc = ", ".join(
            f"{task} {'yes' if r['auc_ok'][task] else 'no'} "
            f"({r['hydranet']['auc'][task] - r['deepctr']['auc'][task]:+.4f}, seed std "
            f"{max(r['hydranet']['auc_std'][task], r['deepctr']['auc_std'][task]):.4f})"
            for task in TASKS
        )
        return (
            f"{t} threads: throughput ≥ 3× {'yes' if r['ratio_train'] >= 3 else 'no'}, "
            f"≥ 4× (issue 15) {'yes' if r['ratio_train'] >= 4 else 'no'} "
            f"({r['ratio_train']:.2f}×); mean AUC equal or better: {auc}"
        )

    verdicts = "; ".join(verdict(t, r) for t, r in results.items())
    first = next(iter(results))
    gpu = ""
    if args.device.startswith("cuda"):
        h = results[first]["hydranet"]
        rate, income = med(h["train_rows_per_s"]), h["auc"]["income"]
        ok = rate >= GPU_TARGET["rows_per_s"] and income >= GPU_TARGET["income_auc"]
        gpu = (
            f"\n\n**GPU target (≥ 2,000,000 training rows/s at batch {args.batch_size} with test income AUC ≥ 0.940):** "
            f"{'met' if ok else 'MISSED'}: {rate:,.0f} rows/s, income AUC {income:.4f}."
        )
    return (
        C.provenance(command, device=args.device, threads=first, extra=("deepctr-torch",))
        + f"\nhydranet step mode: `{args.mode}` (see the script's docstring).\n"
        + f"\nSame process, {n_train:,} training and {n_test:,} test rows, "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr 1e-3 constant, seeds 0..{args.seeds - 1}, "
        "8 experts × [16], linear gates, towers [8], embedding 4; DeepCTR's other arguments at their "
        "defaults (embedding and hidden-layer init N(0, 1e-4), L2 1e-5 on embeddings, loss summed over the batch); "
        "hydranet's at its defaults too (embedding init N(0, 0.05), tower output layers at PyTorch's init × 0.1, mean loss). "
        "Trained in turn epoch by epoch (order alternating) so both see the same load; only "
        "training epochs timed. AUCs by `hydranet.tasks.auc` on whole-split predictions for both. "
        "Per-epoch train rows/s: "
        f"{per_epoch}.\n\n"
        + table
        + "\n\n**Target (≥ 3× DeepCTR-Torch training throughput with equal or better AUC; issue 15 asks ≥ 4×):** "
        f"{verdicts}." + gpu
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs for both (default 5)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-batch-size", type=int, default=8192, help="inference batch for both")
    p.add_argument(
        "--repeats", type=int, default=3, help="inference passes timed (median reported)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for both (default 3)")
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="+",
        default=None,
        help="run the whole comparison at each of these torch thread counts (default: --threads)",
    )
    p.add_argument(
        "--mode",
        choices=list(MODES),
        default="auto",
        help="hydranet's training step (see the docstring; default auto)",
    )
    p.add_argument(
        "--section",
        default=None,
        help="the RESULTS.md section to write (default: peers-census, or "
        "peers-census-DEVICE-MODE off the CPU default); another machine's run gets its own",
    )
    args = p.parse_args(argv)
    if args.mode == "cuda-graph" and not args.device.startswith("cuda"):
        p.error(
            f"--mode cuda-graph captures CUDA graphs: it needs --device cuda, not {args.device}"
        )
    if args.smoke:
        args.epochs, args.repeats, args.seeds = 1, 1, 1
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
    print(C.write_section(_results(args), section_name(args), body))
    return {**results[counts[0]], "by_threads": results}


def section_name(args) -> str:
    """One RESULTS.md section per device kind and step mode (the CPU default keeps the old name)."""
    if args.section:
        return args.section
    device = args.device.split(":")[0]
    if device == "cpu" and args.mode == "auto":
        return SECTION
    return f"{SECTION}-{device}-{args.mode}"


def _results(args) -> Path | None:
    path = C.results_path(args)
    C.ensure_about(path)
    return path


if __name__ == "__main__":
    C.run_main(main)
