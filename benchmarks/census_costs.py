"""What each census encoder and trunk costs in training rows/s, measured side by side.

One process builds a real ``Trainer`` for each configuration (examples/census.toml's MMoE with
each numeric encoder; the wide single-task and cross-stitch networks of census_mtl.py;
examples/census_tabm.toml's TabM with the plain and the tree-binned numeric input) and times ``Trainer.train_step`` on its own batches: ``--rounds`` rounds, each
visiting every configuration in a rotated order for ``--steps`` steps after one untimed step,
so that all of them see the same load on a shared machine. Reported: the median rows/s over
rounds and the median over rounds of each configuration's rows/s divided by the MMoE
example's in the same round. Only speed is measured here; the test AUCs of these
configurations are in the sections census-encoders, census-tuned-tree-bins and
census-tabm-ensembles of RESULTS.md.

    .venv/bin/python benchmarks/census_costs.py --threads 1
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import census_mtl  # noqa: E402

SECTION = "census-costs"
TABM_EXAMPLE = C.ROOT / "examples" / "census_tabm.toml"
TREE = {"model.encoders": {"numeric": {"name": "piecewise_linear", "params": {"bins": "tree"}}}}
# name -> (example, keys replaced as `--set` takes them, label)
CONFIGS: dict[str, tuple[Path, dict[str, Any], str]] = {
    "mmoe_identity": (C.CENSUS_EXAMPLE, {}, "MMoE example, numeric values as they are"),
    "mmoe_pl_quantile": (
        C.CENSUS_EXAMPLE,
        {"model.encoders": {"numeric": {"name": "piecewise_linear"}}},
        "MMoE, piecewise-linear numeric embedding, quantile bins",
    ),
    "mmoe_pl_tree": (
        C.CENSUS_EXAMPLE,
        TREE,
        "MMoE, piecewise-linear numeric embedding, tree bins (income)",
    ),
    "mmoe_periodic": (
        C.CENSUS_EXAMPLE,
        {"model.encoders": {"numeric": {"name": "periodic"}}},
        "MMoE, periodic numeric embedding (PLR)",
    ),
    # the best single models of section census-mtl: its `_wide` rows, the same specs
    "single_task_tree_wide": (
        *census_mtl.CONFIGS["single_task_tree_wide"],
        "single-task, tree bins, hidden [256, 128]",
    ),
    "cross_stitch_tree_wide": (
        *census_mtl.CONFIGS["cross_stitch_tree_wide"],
        "cross-stitch, tree bins, hidden [256, 128]",
    ),
    "tabm_identity": (TABM_EXAMPLE, {}, "TabM example (k = 32, d_block 128, 2 blocks)"),
    "tabm_pl_tree": (TABM_EXAMPLE, TREE, "TabM, tree bins"),
}
BASE = "mmoe_identity"
SMOKE_TABM = {"k": 2, "d_block": 8, "n_blocks": 1}


def build_trainer(name: str, data: dict[str, Any], args, work: Path):
    from hydranet.spec import Spec
    from hydranet.spec_keys import assign
    from hydranet.train.trainer import setup

    example, sets, _ = CONFIGS[name]
    raw = Spec.load(example).to_dict()
    raw["name"] = f"census_costs_{name}"
    raw["data"] = {**data}
    for key, value in sets.items():
        assign(raw, key, value, flag="")
    if args.smoke and raw["model"]["architecture"] == "tabm":
        raw["model"]["params"] = dict(SMOKE_TABM)
    raw["train"].update(epochs=1, seed=0, device=args.device, threads=args.threads)
    raw["train"]["early_stopping"] = None
    spec = Spec.from_dict(raw, source=f"{example} (benchmark overrides)")
    trainer = setup(spec, work / name, progress=False)
    trainer.model.train()
    return trainer


def measure(trainers: dict[str, Any], steps: int, rounds: int) -> dict[str, list[float]]:
    """rows/s per configuration and round (the order rotated each round)."""
    batches = {}
    for name, tr in trainers.items():
        bs: list[Any] = []
        while len(bs) < steps + 1:  # an epoch of a small split may hold fewer batches
            for b in tr.loader:
                bs.append(b)
                if len(bs) == steps + 1:
                    break
        batches[name] = bs
    speeds: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tr, bs = trainers[name], batches[name]
            tr.train_step(bs[0])  # untimed: caches warm after the other configurations ran
            t0 = time.perf_counter()
            for b in bs[1:]:
                tr.train_step(b)
            seconds = time.perf_counter() - t0
            speeds[name].append(sum(b.size for b in bs[1:]) / seconds)
    return speeds


def render(speeds: dict[str, list[float]], params: dict[str, int], args, command: str) -> str:
    rows = []
    for name, s in speeds.items():
        ratios = [a / b for a, b in zip(s, speeds[BASE], strict=True)]
        rows.append(
            [
                f"`{name}` ({CONFIGS[name][2]})",
                f"{params[name]:,}",
                f"{statistics.median(s):,.0f}",
                f"{min(s):,.0f}-{max(s):,.0f}",
                f"{statistics.median(ratios):.3f}",
            ]
        )
    table = C.markdown_table(
        [
            "configuration",
            "parameters",
            "training rows/s (median of rounds)",
            "range over rounds",
            "× the MMoE example (median of per-round ratios)",
        ],
        rows,
    )
    return "\n".join(
        [
            "## Census: what each encoder and trunk costs in training rows/s",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            f"Each configuration a real `Trainer` on the census group-1 training split (batch 1024), "
            f"{args.rounds} rounds of {args.steps} timed `train_step`s each, every round visiting "
            "every configuration in a rotated order after one untimed step. Speed only: the "
            "test AUCs are in the sections census-encoders (numeric encoders under MMoE), "
            "census-tuned-tree-bins and census-mtl (tree bins), census-tabm-ensembles (TabM).",
            "",
            table,
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0], threads=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration and round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.rounds = min(args.steps, 2), min(args.rounds, 2)
    if BASE not in args.configs:
        args.configs = [BASE, *args.configs]
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, SECTION)
    data = C.census_data(args.smoke, work)
    trainers = {name: build_trainer(name, data, args, work / "runs") for name in args.configs}
    params = {n: sum(q.numel() for q in t.model.parameters()) for n, t in trainers.items()}
    speeds = measure(trainers, args.steps, args.rounds)
    for name, s in speeds.items():
        print(f"{name}: {statistics.median(s):,.0f} rows/s")
    body = render(speeds, params, args, C.command_line(argv))
    results = C.results_path(args)
    C.ensure_about(results)
    print(C.write_section(results, SECTION, body))
    return {"speeds": speeds, "parameters": params}


if __name__ == "__main__":
    C.run_main(main)
