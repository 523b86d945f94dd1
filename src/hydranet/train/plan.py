"""``hydranet plan``: the resolved spec, the model and the data, without training."""

from __future__ import annotations

import json

from hydranet.spec import Spec


def plan(spec: Spec) -> str:
    from hydranet.models.build import build_model
    from hydranet.train.builders import build_balancer, fit_encoders
    from hydranet.train.prepare import prepare, resolve_auto_sizes, resolve_spec

    spec = resolve_spec(spec)
    torch_seed(spec.train.seed)
    tasks, prep, splits = prepare(spec)
    spec, chosen = resolve_auto_sizes(spec, len(splits["train"]))
    model = build_model(spec, prep, tasks, fit_encoders(spec, prep, tasks, splits["train"]))
    build_balancer(spec)  # fails here, not mid-training, on bad balance params
    lines = ["# resolved spec", json.dumps(spec.to_dict(), indent=2), ""]
    if chosen:
        lines += ["# chosen", *(f"  {c}" for c in chosen), ""]
    lines.append("# model")
    summary = model.parameter_summary()
    width = max(len(k) for k in summary)
    for part, n in summary.items():
        lines.append(f"  {part:<{width}}  {n:>10,}")
    lines.append(f"  {'total':<{width}}  {sum(p.numel() for p in model.parameters()):>10,}")
    fusion = model.encoder
    per = (
        f"one trunk input per task, {fusion.out_dim} each"
        if fusion.per_task
        else f"{fusion.out_dim}"
    )
    params = ", ".join(f"{k} = {v!r}" for k, v in spec.model.fusion_params.items())
    lines.append(
        f"  fusion {spec.model.fusion!r}" + (f" ({params})" if params else "") + f" → {per}"
    )
    lines += ["", "# data"]
    for name, group in prep.groups.items():
        encoder = type(model.encoder.encoders[name]).__name__
        width = model.encoder.encoders[name].out_dim
        extra = f", {group.summary()}" if group.summary() else ""
        lines.append(
            f"  features {name!r}: {group.kind}, {len(group.columns)} columns → {len(group.names_out)} values{extra}; encoder {encoder} → {width}"
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
