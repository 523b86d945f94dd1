"""``hydranet plan``: the resolved spec, the model and the data, without training."""

from __future__ import annotations

import json

from hydranet.spec import Spec


def plan(spec: Spec) -> str:
    from hydranet.train.prepare import prepare, resolve_spec
    from hydranet.train.trainer import build_balancer, build_model

    spec = resolve_spec(spec)
    torch_seed(spec.train.seed)
    tasks, prep, splits = prepare(spec)
    model = build_model(spec, prep.cardinalities, prep.n_numeric_out, tasks)
    build_balancer(spec)  # fails here, not mid-training, on bad balance params
    lines = ["# resolved spec", json.dumps(spec.to_dict(), indent=2), "", "# model"]
    summary = model.parameter_summary()
    width = max(len(k) for k in summary)
    for part, n in summary.items():
        lines.append(f"  {part:<{width}}  {n:>10,}")
    lines.append(f"  {'total':<{width}}  {sum(p.numel() for p in model.parameters()):>10,}")
    lines += ["", "# data"]
    lines.append(
        f"  features: {len(spec.data.numeric)} numeric → {prep.n_numeric_out} columns, {len(spec.data.categorical)} categorical (vocabulary sizes {sum(prep.cardinalities):,} in all)"
    )
    for name, split in splits.items():
        if not hasattr(split, "masks"):  # a streamed split is never loaded whole
            lines.append(
                f"  {name:<10} {len(split):>10,} rows | streamed from {spec.data.train} in chunks of {spec.data.chunk_rows:,} rows"
            )
            continue
        parts = [
            f"{t.name}: {t.label_summary(split.labels[t.name], split.masks[t.name])}" for t in tasks
        ]
        lines.append(f"  {name:<10} {len(split):>10,} rows | " + " | ".join(parts))
    return "\n".join(lines)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
