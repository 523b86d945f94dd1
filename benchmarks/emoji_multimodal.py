"""Emoji (issue 16, acceptance 1): multimodal multi-task against single-modality models.

One MMoE per configuration on the bundled ``emoji`` data set (picture, name words, the Emoji
version ``added_in``; tasks category, subcategory, skin_tones), a few seeds each:

- single modality: the picture alone (``cnn`` from scratch; ``mobilenet_v2`` frozen), the
  words alone (``bag`` from scratch; ``minilm`` frozen), ``added_in`` alone (a floor);
- multimodal from scratch (cnn + bag + added_in) and pretrained (mobilenet_v2 + minilm frozen
  + added_in), each with ``concat`` and ``gated`` fusion, and with ``concat`` over
  layer-normalised groups plus modality dropout (``fusion_params``: ``norm``,
  ``modality_dropout``); the normalised concat for the frozen single modalities too;
- 10% of the labels: the three labels are nulled on a seeded 90% of the training rows
  (validation and test keep theirs) and the best scratch and pretrained multimodal models
  (by validation score) run against the best picture-only and words-only ones.

Every run appends a line to ``results.jsonl`` in the work directory and is skipped when it is
already there (resumable); ``--report-only`` re-renders the section from that file.

    .venv/bin/python benchmarks/emoji_multimodal.py --seeds 3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

SECTION = "emoji-multimodal"
TASKS = ("category", "subcategory", "skin_tones")
METRICS = {"category": "accuracy", "subcategory": "accuracy", "skin_tones": "auc"}
SMALL_FRACTION = 0.1

# (picture encoder, words encoder, added_in, fusion, fusion params); None leaves the modality out
NORM = {"norm": True}  # each group layer-normalised before the concatenation
NORM_MD = {"norm": True, "modality_dropout": 0.2}  # and each group dropped per row with p 0.2
CONFIGS: dict[str, tuple[str | None, str | None, bool, str, dict[str, Any]]] = {
    "image_cnn": ("cnn", None, False, "concat", {}),
    "image_mobilenet": ("mobilenet_v2", None, False, "concat", {}),
    "image_mobilenet_norm": ("mobilenet_v2", None, False, "concat", NORM),
    "text_bag": (None, "bag", False, "concat", {}),
    "text_minilm": (None, "minilm", False, "concat", {}),
    "text_minilm_norm": (None, "minilm", False, "concat", NORM),
    "added_in": (None, None, True, "concat", {}),
    "mm_scratch_concat": ("cnn", "bag", True, "concat", {}),
    "mm_scratch_gated": ("cnn", "bag", True, "gated", {}),
    "mm_scratch_norm_md": ("cnn", "bag", True, "concat", NORM_MD),
    "mm_pretrained_concat": ("mobilenet_v2", "minilm", True, "concat", {}),
    "mm_pretrained_gated": ("mobilenet_v2", "minilm", True, "gated", {}),
    "mm_pretrained_norm_md": ("mobilenet_v2", "minilm", True, "concat", NORM_MD),
}
FLOOR = "added_in"  # one seed is enough for the floor
LABELS = {
    "image_cnn": "picture only, cnn",
    "image_mobilenet": "picture only, mobilenet_v2 frozen",
    "image_mobilenet_norm": "picture only, mobilenet_v2 frozen, normalised",
    "text_bag": "words only, bag",
    "text_minilm": "words only, minilm frozen",
    "text_minilm_norm": "words only, minilm frozen, normalised",
    "added_in": "added_in only (floor)",
    "mm_scratch_concat": "multimodal scratch, concat",
    "mm_scratch_gated": "multimodal scratch, gated",
    "mm_scratch_norm_md": "multimodal scratch, concat, normalised + modality dropout",
    "mm_pretrained_concat": "multimodal pretrained, concat",
    "mm_pretrained_gated": "multimodal pretrained, gated",
    "mm_pretrained_norm_md": "multimodal pretrained, concat, normalised + modality dropout",
}
SINGLE_IMAGE = ("image_cnn", "image_mobilenet", "image_mobilenet_norm")
SINGLE_TEXT = ("text_bag", "text_minilm", "text_minilm_norm")
MM_SCRATCH = ("mm_scratch_concat", "mm_scratch_gated", "mm_scratch_norm_md")
MM_PRETRAINED = ("mm_pretrained_concat", "mm_pretrained_gated", "mm_pretrained_norm_md")

# the settings of examples/emoji.toml; the benchmark replaces only the features and encoders
MODEL = {
    "architecture": "mmoe",
    "params": {"num_experts": 4, "expert_hidden": [64]},
    "tower": [32],
    "dropout": 0.2,
}
# dropout 0.2 and AdamW's weight decay 0.01: without them every model stopped at its best
# validation loss after 5-10 epochs (1,548 rows); chosen on validation, then used everywhere
TRAIN = {
    "epochs": 30,
    "batch_size": 64,
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "lr": 3e-3,
    "early_stopping": {"metric": "loss", "patience": 4},
}
# half the default widths: a 2-core CPU trains it ~3x faster at the same accuracy on emoji
CNN_PARAMS = {"channels": [16, 32, 64, 64], "out_dim": 64}


# ------------------------------------------------------------------ data
def emoji_paths(smoke: bool, work: Path) -> dict[str, str]:
    """The bundled emoji splits (built once), or a tiny generated emoji-like set for smoke runs."""
    if not smoke:
        from hydranet.data.sources import resolve_dataset
        from hydranet.spec import DataSpec

        data = resolve_dataset(DataSpec(dataset="emoji"))
        return {s: str(getattr(data, s)) for s in ("train", "validation", "test")}
    return _smoke_splits(work)


def _smoke_splits(work: Path) -> dict[str, str]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    words = ["face", "hand", "flag", "cat", "sun", "car"]
    colours = [(250, 200, 40), (230, 180, 120), (40, 90, 200), (120, 120, 120)]
    paths = {}
    for split, n in (("train", 48), ("validation", 16), ("test", 16)):
        cat = rng.integers(0, 3, size=n)
        sub = cat * 2 + rng.integers(0, 2, size=n)
        images = []
        for c in cat:
            buf = io.BytesIO()
            Image.new("RGBA", (16, 16), (*colours[c], 255)).save(buf, format="PNG")
            images.append(buf.getvalue())
        table = pa.table(
            {
                "image": pa.array(images, pa.binary()),
                "name": [
                    f"{words[c].upper()} {words[s % 6]}" for c, s in zip(cat, sub, strict=True)
                ],
                "short_names": [words[s % 6] for s in sub],
                "added_in": rng.choice([0.6, 1.0, 13.1], size=n),
                "category": [f"c{c}" for c in cat],
                "subcategory": [f"s{s}" for s in sub],
                "skin_tones": pa.array((cat == 1).astype(np.int8)),
            }
        )
        paths[split] = str(work / f"emoji_smoke_{split}.parquet")
        pq.write_table(table, paths[split])
    return paths


def fewer_labels(train: str, fraction: float, seed: int, work: Path) -> str:
    """The training file with the three labels nulled on all but ``fraction`` of its rows.

    The rows that keep their labels: one per subcategory first (a class never seen in training
    cannot be predicted, and the test metric would then silently leave its rows out), then
    more at random up to ``fraction``; seeded by ``seed``, so every configuration of a seed
    sees the same labels."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = work / f"train_labels{round(fraction * 100)}_s{seed}.parquet"
    if out.exists():
        return str(out)
    table = pq.read_table(train)
    rng = np.random.default_rng(seed)
    n = table.num_rows
    sub = np.asarray(table["subcategory"].to_pylist(), dtype=object)
    keep = np.zeros(n, dtype=bool)
    for value in sorted(set(sub.tolist())):
        keep[rng.choice(np.flatnonzero(sub == value))] = True
    wanted = max(int(round(fraction * n)), int(keep.sum()))
    rest = rng.permutation(np.flatnonzero(~keep))[: wanted - int(keep.sum())]
    keep[rest] = True
    mask = pa.array(keep)
    for task in TASKS:
        col = table[task]
        table = table.set_column(
            table.schema.get_field_index(task),
            task,
            pc.if_else(mask, col, pa.scalar(None, col.type)),
        )
    tmp = out.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)  # a killed run leaves no half-written file behind under the real name
    return str(out)


# ------------------------------------------------------------------ specs
def weights_paths(args) -> tuple[str, str]:
    """The mobilenet_v2 .pth file and the minilm directory (``hydranet fetch-weights``'s)."""
    from hydranet.weights import WEIGHTS, weights_dir

    mobilenet = args.mobilenet or str(
        weights_dir("mobilenet_v2") / WEIGHTS["mobilenet_v2"].spec_file
    )
    minilm = args.minilm or str(weights_dir("minilm"))
    return mobilenet, minilm


def build_raw(
    config: str, paths: dict[str, str], args, seed: int, size: int, epochs: int
) -> dict[str, Any]:
    image, text, numeric, fusion, fusion_params = CONFIGS[config]
    mobilenet, minilm = weights_paths(args)
    features, encoders = [], {}
    if image:
        features.append(
            {"name": "image", "kind": "image", "columns": ["image"], "params": {"size": size}}
        )
        encoders["image"] = (
            {"name": "cnn", "params": dict(CNN_PARAMS)}
            if image == "cnn"
            else {"name": "mobilenet_v2", "params": {"weights": mobilenet, "freeze": True}}
        )
    if text:
        params: dict[str, Any] = {"max_tokens": 16}
        if text == "minilm":
            params["tokenizer"] = str(Path(minilm) / "tokenizer.json")
            encoders["text"] = {"name": "minilm", "params": {"weights": minilm, "freeze": True}}
        else:
            encoders["text"] = {"name": "bag", "params": {"d_embedding": 32}}
        features.append(
            {"name": "text", "kind": "text", "columns": ["name", "short_names"], "params": params}
        )
    return {
        "name": f"emoji_{config}",
        # explicit paths, not dataset = "emoji": the dataset would add added_in to every run
        "data": {**paths, "numeric": ["added_in"] if numeric else []},
        "features": features,
        "tasks": [
            {"name": "category", "kind": "multiclass"},
            {"name": "subcategory", "kind": "multiclass"},
            {"name": "skin_tones", "kind": "binary"},
        ],
        "model": {
            **MODEL,
            "encoders": encoders,
            "fusion": fusion,
            "fusion_params": dict(fusion_params),
        },
        "train": {
            **TRAIN,
            "epochs": epochs,
            "seed": seed,
            "device": args.device,
            "threads": args.threads,
        },
    }


def run_one(
    config: str, fraction: float, paths: dict[str, str], args, seed: int, work: Path
) -> dict[str, Any]:
    from hydranet.spec import Spec

    if fraction < 1.0:
        paths = {**paths, "train": fewer_labels(paths["train"], fraction, seed, work)}
    size, epochs = (32, 1) if args.smoke else (64, TRAIN["epochs"])
    raw = build_raw(config, paths, args, seed, size, epochs)
    spec = Spec.from_dict(raw, source=f"benchmarks/emoji_multimodal.py ({config})")
    out = work / "runs" / f"{config}_f{round(fraction * 100)}_s{seed}"
    run, seconds = C.train_fresh(spec, out)
    final = run.final_metrics
    from hydranet.train.transfer import pretrained_encoders

    # a frozen pretrained encoder never trains (its embeddings are cached before training);
    # counted from the spec's freeze settings, as requires_grad is not restored on load
    frozen = sum(
        p.numel()
        for enc in pretrained_encoders(run.model).values()
        if enc.freeze and enc.unfreeze_after is None
        for p in enc.parameters()
    )
    total = sum(p.numel() for p in run.model.parameters())
    record: dict[str, Any] = {
        "config": config,
        "fraction": fraction,
        "seed": seed,
        "test": {t: final["test"][t][METRICS[t]] for t in TASKS},
        "validation": {t: final["validation"][t][METRICS[t]] for t in TASKS},
        "parameters": total,
        "trainable": total - frozen,
        "epochs_run": final["epochs"],
        "best_epoch": final["best_epoch"],
        "seconds": seconds,
        "git": C.git_commit(),
    }
    if CONFIGS[config][3] == "gated":
        record["modality_weights"] = modality_weights(out, paths["test"])
    return record


def modality_weights(run_dir: Path, test: str) -> dict[str, dict[str, float]]:
    """The gated fusion's mean weight per task and group over the test rows.

    The run is loaded afresh: the trained model in memory may have its frozen groups marked
    as pre-encoded (training ran on their cached embeddings), the loaded one encodes them."""
    import pyarrow.parquet as pq

    from hydranet.run import Run

    run = Run.load(run_dir)
    features = run.preprocessor.transform(pq.read_table(test))
    return run.model.modality_weights(features)


# ------------------------------------------------------------------ choosing and reporting
def _rows(records, config: str, fraction: float) -> list[dict[str, Any]]:
    return sorted(
        (r for r in records if r["config"] == config and r["fraction"] == fraction),
        key=lambda r: r["seed"],
    )


def _mean(records, config: str, fraction: float, split: str, task: str) -> float | None:
    rs = _rows(records, config, fraction)
    return C.mean_std([r[split][task] for r in rs])[0] if rs else None


def best_by_validation(records, candidates: tuple[str, ...], fraction: float = 1.0) -> str | None:
    """The candidate with the highest mean validation score (mean over the tasks' metrics)."""
    scored = []
    for c in candidates:
        values = [_mean(records, c, fraction, "validation", t) for t in TASKS]
        if all(v is not None for v in values):
            scored.append((float(np.mean(values)), c))
    return max(scored)[1] if scored else None


def small_fraction_configs(records) -> list[str]:
    """What runs at 10% of the labels: the best (by validation, at 100%) of each family."""
    picks = [
        best_by_validation(records, family)
        for family in (MM_SCRATCH, MM_PRETRAINED, SINGLE_IMAGE, SINGLE_TEXT)
    ]
    return [p for p in picks if p is not None]


def _fmt(values: list[float]) -> str:
    mean, std = C.mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def _verdicts(records, fraction: float) -> list[str]:
    singles = [c for c in (*SINGLE_IMAGE, *SINGLE_TEXT) if _rows(records, c, fraction)]
    multis = [c for c in (*MM_SCRATCH, *MM_PRETRAINED) if _rows(records, c, fraction)]
    if not singles or not multis:
        return []
    pct = f"{round(fraction * 100)}% of the labels"
    lines = []
    best_mm = best_by_validation(records, tuple(multis), fraction)
    outcome = []
    for t in TASKS:
        best_single = max(singles, key=lambda c: _mean(records, c, fraction, "test", t))
        mm, single = (_mean(records, c, fraction, "test", t) for c in (best_mm, best_single))
        # 4 decimals: with 181 test rows two models can tie exactly
        outcome.append("wins" if mm > single else "ties" if mm == single else "loses")
        lines.append(
            f"{t} {METRICS[t]} {mm:.4f} vs {single:.4f} ({LABELS[best_single]}): {outcome[-1]}"
        )
    verdict = "beats" if all(o == "wins" for o in outcome) else "does not beat"
    return [
        f"- **Multimodal vs single modality, {pct}:** the multimodal model chosen by "
        f"validation ({LABELS[best_mm]}) {verdict} the best single-modality model on every "
        f"task (the single model compared is the best on test, per task): " + "; ".join(lines) + "."
    ]


def _pair_line(records, a: str, b: str, fraction: float) -> str | None:
    ra, rb = _rows(records, a, fraction), _rows(records, b, fraction)
    if not ra or not rb:
        return None
    parts = []
    for t in TASKS:
        ma, mb = (C.mean_std([r["test"][t] for r in rs])[0] for rs in (ra, rb))
        parts.append(f"{t} {mb - ma:+.3f}")
    return f"{LABELS[b]} minus {LABELS[a]} ({round(fraction * 100)}%): " + ", ".join(parts)


def render(records: list[dict[str, Any]], args, command: str) -> str:
    rows = []
    for fraction in (1.0, SMALL_FRACTION):
        for config in CONFIGS:
            rs = _rows(records, config, fraction)
            if not rs:
                continue
            row: list[Any] = [LABELS[config], f"{round(fraction * 100)}%", len(rs)]
            row += [_fmt([r["test"][t] for r in rs]) for t in TASKS]
            row.append(f"{rs[0]['trainable']:,} / {rs[0]['parameters']:,}")
            row.append(f"{C.mean_std([r['seconds'] for r in rs])[0]:.0f}")
            row.append(" / ".join(str(r["best_epoch"]) for r in rs))
            rows.append(row)
    table = C.markdown_table(
        [
            "configuration",
            "labels",
            "seeds",
            "test category accuracy",
            "test subcategory accuracy",
            "test skin_tones AUC",
            "parameters (trained / all)",
            "s per run",
            "best epoch per seed",
        ],
        rows,
    )
    lines = [*_verdicts(records, 1.0), *_verdicts(records, SMALL_FRACTION)]
    pairs = [
        ("mm_scratch_concat", "mm_scratch_gated", 1.0),
        ("mm_pretrained_concat", "mm_pretrained_gated", 1.0),
        ("mm_scratch_concat", "mm_pretrained_concat", 1.0),
        ("mm_scratch_gated", "mm_pretrained_gated", 1.0),
        ("mm_scratch_norm_md", "mm_pretrained_norm_md", 1.0),
    ]
    scratch10 = best_by_validation(records, MM_SCRATCH, SMALL_FRACTION)
    pre10 = best_by_validation(records, MM_PRETRAINED, SMALL_FRACTION)
    if scratch10 and pre10:
        pairs.append((scratch10, pre10, SMALL_FRACTION))
    norm_pairs = [
        ("mm_scratch_concat", "mm_scratch_norm_md", 1.0),
        ("mm_pretrained_concat", "mm_pretrained_norm_md", 1.0),
        ("image_mobilenet", "image_mobilenet_norm", 1.0),
        ("text_minilm", "text_minilm_norm", 1.0),
    ]
    for title, chosen in (
        ("Gated vs concat", pairs[:2]),
        ("Pretrained vs scratch", pairs[2:]),
        ("Normalised groups (+ modality dropout with several groups) vs plain concat", norm_pairs),
    ):
        diffs = [line for a, b, f in chosen if (line := _pair_line(records, a, b, f))]
        if diffs:
            lines.append(
                f"- **{title}** (difference of the mean test metric): " + "; ".join(diffs) + "."
            )
    gates = []
    for fraction in (1.0, SMALL_FRACTION):
        for config in (*MM_SCRATCH, *MM_PRETRAINED):
            rs = [r for r in _rows(records, config, fraction) if "modality_weights" in r]
            if not rs or CONFIGS[config][3] != "gated":
                continue
            for t in TASKS:
                groups = list(rs[0]["modality_weights"][t])
                # per seed, not only the mean: a gate that saturates on a different group in
                # each seed averages to a mix no single model uses
                cells = [
                    f"{C.mean_std([r['modality_weights'][t][g] for r in rs])[0]:.2f} ("
                    + " / ".join(f"{r['modality_weights'][t][g]:.2f}" for r in rs)
                    + ")"
                    for g in groups
                ]
                gates.append(
                    [LABELS[config], f"{round(fraction * 100)}%", t]
                    + [f"{g}: {c}" for g, c in zip(groups, cells, strict=True)]
                )
    width = max((len(g) for g in gates), default=0)
    gate_table = (
        C.markdown_table(
            ["configuration", "labels", "task"] + [f"group {i + 1}" for i in range(width - 3)],
            [g + [""] * (width - len(g)) for g in gates],
        )
        if gates
        else ""
    )
    seeds = sorted({r["seed"] for r in records})
    return "\n".join(
        [
            "## Emoji: multimodal multi-task against single-modality models (issue 16)",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            f"Bundled `emoji` data (1,548 / 182 / 181 rows; seeds {', '.join(map(str, seeds))}). "
            "Every configuration is the MMoE of examples/emoji.toml (4 experts of [64], towers "
            "[32], dropout 0.2, AdamW lr 3e-3 with weight decay 0.01, batch 64, at most 30 epochs, early stopping on the validation "
            "loss with patience 4, the best epoch's weights kept) with its own features: "
            "picture = image group `image` (64 px), words = text group `text` (`name`, "
            "`short_names`, 16 tokens each), plus the numeric `added_in` in the multimodal rows. "
            "`cnn` has channels [16, 32, 64, 64]; `bag` 32-d; `mobilenet_v2` (ImageNet) and "
            "`minilm` (all-MiniLM-L6-v2) are frozen, so their embeddings are computed once and "
            "cached. 'normalised': `fusion_params.norm = true` (each group's vector "
            "layer-normalised before the concatenation); 'modality dropout': "
            "`fusion_params.modality_dropout = 0.2` (in training each group of each row is "
            "zeroed with probability 0.2). MMoE rather than shared_bottom: the default trunk and the one the other "
            "examples use, and with three tasks of different difficulty the experts' gates can "
            "share less than a single bottom must. Metrics on the test split: accuracy for "
            "category (10 classes) and subcategory (99), AUC for skin_tones; mean ± std over "
            "seeds. At 10% the three labels are nulled on 90% of the training rows "
            "(per seed; one row of every subcategory always keeps its labels, so every test "
            "class can be predicted), validation and test untouched; the 10% rows are the best "
            "(by validation, at 100%) of each family. The floor ran one seed.",
            "",
            table,
            "",
            *lines,
            "",
            "Gated fusion: the mean gate weight of each group per task on the test split "
            "(`run.model.modality_weights(run.preprocessor.transform(test))`): the mean over seeds, then each seed's.",
            "",
            gate_table,
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0], threads=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument(
        "--no-small-fraction", action="store_true", help="skip the runs at 10%% of the labels"
    )
    p.add_argument("--mobilenet", default=None, help="mobilenet_v2 .pth (default: fetch-weights')")
    p.add_argument("--minilm", default=None, help="minilm directory (default: fetch-weights')")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = min(args.seeds, 1)
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, SECTION)
    log = work / "results.jsonl"
    records = C.read_jsonl(log)
    if not args.report_only:
        paths = emoji_paths(args.smoke, work)

        def sweep(configs: list[str], fraction: float) -> None:
            C.run_missing(
                records,
                log,
                [
                    (config, seed)
                    for seed in range(args.seeds)
                    for config in configs
                    if not (config == FLOOR and seed > 0)
                ],
                run=lambda config, seed: run_one(config, fraction, paths, args, seed, work),
                done=lambda job, r: (r["config"], r["seed"]) == job and r["fraction"] == fraction,
                line=lambda r: (
                    f"{r['config']} {round(fraction * 100)}% seed {r['seed']}: "
                    + ", ".join(f"{t} {r['test'][t]:.3f}" for t in TASKS)
                    + f" ({r['seconds']:.0f} s)"
                ),
            )

        sweep(args.configs, 1.0)
        if not args.no_small_fraction:
            sweep(small_fraction_configs(records), SMALL_FRACTION)
    command = C.report_command(argv, args.report_only, "re-rendered")
    body = render(records, args, command)
    results = C.results_path(args)
    C.ensure_about(results)
    print(C.write_section(results, SECTION, body))
    return {"records": records}


if __name__ == "__main__":
    C.run_main(main)
