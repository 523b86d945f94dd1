"""The MMoE paper's synthetic study: shared-bottom vs OMoE vs MMoE as task correlation varies.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, section 3.2 and Figure 4: two regression tasks
whose linear parts have Pearson correlation p (``hydranet.data.datasets.synthetic``),
p in {0.5, 0.9, 1.0}; the paper finds every model does worse as p falls, and
MMoE's lead over OMoE and shared-bottom grows as p falls.

Each (p, seed) draws its own problem (weights, sines) and rows, as in the paper;
the three trunks then train on the same data, from the same seed, with
hydranet's own Trainer: this script only drives ``Trainer.train_step`` itself
so that it can read the training loss after every step (the trainer logs per
epoch). Loss is the mean over both tasks of the MSE on standardized targets.
The curves (mean over seeds, smoothed) go to a PNG; the table reports the final
training loss (mean of the last 10% of steps) and the test MSE.

    .venv/bin/python benchmarks/synthetic_correlation.py --seeds 10
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

SECTION = "synthetic-correlation"
CORRELATIONS = (0.5, 0.9, 1.0)
# Same trunk parameter count (14,544) for shared-bottom and MMoE on the 100 inputs; OMoE
# has the same experts and one gate instead of two (13,736).
TRUNKS: dict[str, dict[str, Any]] = {
    "shared_bottom": {"hidden": [144]},
    "omoe": {"num_experts": 8, "expert_hidden": [16]},
    "mmoe": {"num_experts": 8, "expert_hidden": [16]},
}
SMOKE_TRUNKS: dict[str, dict[str, Any]] = {
    "shared_bottom": {"hidden": [8]},
    "omoe": {"num_experts": 2, "expert_hidden": [4]},
    "mmoe": {"num_experts": 2, "expert_hidden": [4]},
}
COLORS = {"shared_bottom": "tab:blue", "omoe": "tab:orange", "mmoe": "tab:green"}


def make_spec(arch: str, params: dict, p: float, seed: int, args):
    from hydranet.spec import Spec

    return Spec.from_dict(
        {
            "name": f"synthetic_{arch}_p{p}_s{seed}",
            "data": {
                "dataset": "synthetic",
                "params": {
                    "n_rows": args.rows,
                    "n_validation": args.rows // 10,
                    "n_test": args.test_rows,
                    "dim": args.dim,
                    "correlation": p,
                    "seed": seed,
                },
            },
            "tasks": [{"name": "y1", "kind": "regression"}, {"name": "y2", "kind": "regression"}],
            "model": {"architecture": arch, "params": params, "tower": [8]},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": seed,
                "device": args.device,
                "threads": args.threads,
            },
        }
    )


def train_curve(spec, prepared, out: Path) -> tuple[np.ndarray, dict[str, float], float]:
    """Per-step mean training loss, test MSE per task (standardized units), seconds."""
    import torch

    from hydranet.train.trainer import Trainer

    tasks, prep, splits = prepared
    torch.manual_seed(spec.train.seed)
    trainer = Trainer(spec, tasks, splits, prep, out, progress=False)
    trainer.model.train()
    losses = []
    t0 = time.perf_counter()
    prev = trainer.loss_sums.clone()
    for epoch in range(spec.train.epochs):
        trainer.loader.set_epoch(epoch)
        for batch in trainer.loader:
            trainer.train_step(batch)
            now = trainer.loss_sums.clone()
            losses.append(float((now - prev).mean()))
            prev = now
    seconds = time.perf_counter() - t0
    _, test_loss = trainer.evaluate("test")
    return np.asarray(losses), test_loss, seconds


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot(curves: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CORRELATIONS), figsize=(12, 3.4), sharey=True, dpi=80)
    window = max(1, args.smooth)
    for ax, p in zip(axes, CORRELATIONS, strict=True):
        for arch, per_seed in curves[p].items():
            mean = smooth(np.mean(per_seed, axis=0), window)
            steps = np.arange(mean.size) + window
            ax.plot(steps, mean, label=arch, color=COLORS.get(arch), lw=1.4)
        ax.set_title(f"correlation p = {p}")
        ax.set_xlabel("training step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"training loss (mean of {args.seeds} seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_all(args, trunks: dict, work: Path):
    from hydranet.train.prepare import prepare, resolve_spec

    curves: dict[float, dict[str, list[np.ndarray]]] = {
        p: {a: [] for a in trunks} for p in CORRELATIONS
    }
    test: dict[float, dict[str, list[float]]] = {p: {a: [] for a in trunks} for p in CORRELATIONS}
    seconds = 0.0
    for p in CORRELATIONS:
        for seed in range(args.seeds):
            # one problem and one set of rows per (p, seed), shared by the three trunks
            prepared = prepare(resolve_spec(make_spec("mmoe", trunks["mmoe"], p, seed, args)))
            for arch, params in trunks.items():
                spec = resolve_spec(make_spec(arch, params, p, seed, args))
                loss, test_loss, secs = train_curve(spec, prepared, work / f"{arch}_p{p}_s{seed}")
                seconds += secs
                curves[p][arch].append(loss)
                test[p][arch].append(float(np.mean(list(test_loss.values()))))
            print(
                f"p={p} seed {seed}: "
                + "  ".join(f"{a} test {test[p][a][-1]:.4f}" for a in trunks),
                flush=True,
            )
    return curves, test, seconds


def save_raw(path: Path, curves, test, seconds: float) -> None:
    arrays = {"seconds": np.asarray(seconds)}
    for p, per_arch in curves.items():
        for arch, runs in per_arch.items():
            arrays[f"curves/{p}/{arch}"] = np.stack(runs)
            arrays[f"test/{p}/{arch}"] = np.asarray(test[p][arch])
    np.savez_compressed(path, **arrays)


def load_raw(path: Path, trunks: dict):
    if not path.is_file():
        raise SystemExit(f"--report-only: no {path}; run without it first")
    z = np.load(path)
    curves = {p: {a: list(z[f"curves/{p}/{a}"]) for a in trunks} for p in CORRELATIONS}
    test = {p: {a: list(z[f"test/{p}/{a}"]) for a in trunks} for p in CORRELATIONS}
    return curves, test, float(z["seconds"])


def _gains(base: list[float], ours: list[float]) -> tuple[float, float, int]:
    """Relative gain of the means, mean of the per-seed (paired) relative gains, seeds won."""
    b, o = np.asarray(base), np.asarray(ours)
    return float((b.mean() - o.mean()) / b.mean()), float(np.mean((b - o) / b)), int(np.sum(o < b))


def analyse(curves, test, trunks: dict):
    rows, summary = [], {}
    n = len(test[CORRELATIONS[0]]["mmoe"])
    for p in CORRELATIONS:
        final = {
            a: [float(c[-max(1, c.size // 10) :].mean()) for c in curves[p][a]] for a in trunks
        }
        summary[p] = {
            a: {"train": C.mean_std(final[a]), "test": C.mean_std(test[p][a])} for a in trunks
        }
        vs_sb = _gains(test[p]["shared_bottom"], test[p]["mmoe"])
        vs_om = _gains(test[p]["omoe"], test[p]["mmoe"])
        train_vs_sb = _gains(final["shared_bottom"], final["mmoe"])
        train_vs_om = _gains(final["omoe"], final["mmoe"])
        summary[p].update(
            mmoe_vs_sb=vs_sb,
            mmoe_vs_omoe=vs_om,
            mmoe_train_vs_sb=train_vs_sb,
            mmoe_train_vs_omoe=train_vs_om,
        )
        rows.append(
            [f"{p}"]
            + [f"{summary[p][a]['train'][0]:.4f}" for a in trunks]
            + [f"{summary[p][a]['test'][0]:.4f} ± {summary[p][a]['test'][1]:.4f}" for a in trunks]
            + [
                f"{100 * g[0]:+.1f}% / {100 * g[1]:+.1f}% / {g[2]}/{n}"
                for g in (train_vs_sb, train_vs_om, vs_sb, vs_om)
            ]
        )
    table = C.markdown_table(
        ["p"]
        + [f"{a} final train loss" for a in trunks]
        + [f"{a} test MSE" for a in trunks]
        + [
            "MMoE vs shared-bottom, train loss",
            "MMoE vs OMoE, train loss",
            "MMoE vs shared-bottom, test MSE",
            "MMoE vs OMoE, test MSE",
        ],
        rows,
    )

    def trend(key: str, what: str) -> tuple[str, bool]:
        paired = [summary[p][key][1] for p in CORRELATIONS]
        grows = all(a >= b for a, b in zip(paired, paired[1:], strict=False))
        values = ", ".join(
            f"p={p}: {100 * g:+.1f}%" for p, g in zip(CORRELATIONS, paired, strict=True)
        )
        verb = "grows" if grows else "does not grow monotonically"
        return (
            f"MMoE's paired advantage over {what} {verb} as the correlation falls ({values})",
            grows,
        )

    parts = [
        trend("mmoe_train_vs_omoe", "OMoE in final training loss"),
        trend("mmoe_vs_omoe", "OMoE in test MSE"),
        trend("mmoe_train_vs_sb", "shared-bottom in final training loss"),
        trend("mmoe_vs_sb", "shared-bottom in test MSE"),
    ]
    finding = "; ".join(text for text, _ in parts) + "."
    grows = parts[0][1]
    return summary, table, finding, grows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p_ = C.base_parser(__doc__.splitlines()[0])
    p_.add_argument(
        "--seeds", type=int, default=10, help="problems/seeds per correlation (default 10)"
    )
    p_.add_argument("--rows", type=int, default=10_000, help="training rows per problem")
    p_.add_argument("--test-rows", type=int, default=10_000)
    p_.add_argument("--dim", type=int, default=100, help="input dimension (the paper: 100)")
    p_.add_argument("--epochs", type=int, default=50)
    p_.add_argument("--batch-size", type=int, default=256)
    p_.add_argument("--lr", type=float, default=1e-3)
    p_.add_argument(
        "--smooth", type=int, default=20, help="moving-average window of the plot (steps)"
    )
    p_.add_argument("--report-only", action="store_true", help="table and plot from <out>/raw.npz")
    p_.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG path (default benchmarks/synthetic_correlation.png)",
    )
    args = p_.parse_args(argv)
    if args.smoke:
        args.seeds, args.rows, args.test_rows, args.dim, args.epochs, args.smooth = (
            1,
            256,
            128,
            8,
            2,
            2,
        )
    C.setup_torch(args.threads, args.device)
    command = C.report_command(argv, args.report_only, "re-rendered from raw.npz")
    work = C.work_dir(args, "synthetic_correlation")
    trunks = SMOKE_TRUNKS if args.smoke else TRUNKS
    plot_path = args.plot or (
        work / "synthetic_correlation.png"
        if args.smoke
        else C.BENCH_DIR / "synthetic_correlation.png"
    )

    raw = work / "raw.npz"
    if args.report_only:
        curves, test, seconds = load_raw(raw, trunks)
    else:
        curves, test, seconds = run_all(args, trunks, work)
        save_raw(raw, curves, test, seconds)
    plot(curves, plot_path, args)
    summary, table, finding, grows = analyse(curves, test, trunks)
    try:
        rel_plot = plot_path.resolve().relative_to(C.BENCH_DIR)
    except ValueError:
        rel_plot = plot_path
    body = (
        C.provenance(command, device=args.device, threads=args.threads)
        + f"\nSetup: per (p, seed) one problem of `hydranet.data.datasets.synthetic` (dim {args.dim}, "
        f"{args.rows:,} training and {args.test_rows:,} test rows, 10 sines, noise std 0.1), seeds "
        f"0..{args.seeds - 1}; trunks {', '.join(f'`{a}` {v}' for a, v in trunks.items())}, towers [8]; "
        f"Adam lr {args.lr}, constant, batch {args.batch_size}, {args.epochs} epochs "
        f"({curves[CORRELATIONS[0]]['mmoe'][0].size} steps); equal weighting; hydranet's Trainer.train_step. "
        f"Losses are MSE on standardized targets, mean of the two tasks; final train loss = mean of "
        f"the last 10% of steps (mean over seeds); test MSE mean ± std over seeds. Comparison columns: "
        f"relative gain of the means / mean of the per-seed paired relative gains / seeds on which MMoE "
        f"is lower (positive = MMoE better). Training time, all runs: {seconds / 60:.1f} min.\n\n"
        f"![training loss per step]({rel_plot})\n\n" + table + f"\n\n**Finding:** {finding}"
    )
    section = C.write_section(_results(args), SECTION, body)
    print(section)
    return {"summary": summary, "plot": str(plot_path), "grows": grows}


def _results(args) -> Path | None:
    path = C.results_path(args)
    C.ensure_about(path)
    return path


if __name__ == "__main__":
    C.run_main(main)
