"""Batched inference over prepared columns and whole-split metrics."""

from __future__ import annotations

import numpy as np
import torch

from hydranet.tasks import Task


@torch.inference_mode()
def predict_arrays(
    model: torch.nn.Module,
    features: dict[str, torch.Tensor],
    tasks: list[Task],
    batch_size: int = 65536,
    device: torch.device | str = "cpu",
    targets: dict[str, torch.Tensor] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-task predictions (probabilities / values) of ``features`` (``{group: tensor}``,
    the batch format) and, when targets are given, mean loss per task.

    The loss is the mean over labeled elements of the whole split, the same
    quantity the trainer minimizes.
    """
    was_training = model.training
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    loss_sum = {t.name: 0.0 for t in tasks}
    loss_n = {t.name: 0.0 for t in tasks}
    n = next(iter(features.values())).shape[0]
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        out = model({k: v[sl].to(device, non_blocking=True) for k, v in features.items()})
        for t in tasks:
            preds[t.name].append(t.predict(out[t.name]).float().cpu())
            if targets is not None and masks is not None:
                m = masks[t.name][sl].to(device)
                cnt = float(m.sum())
                loss_sum[t.name] += (
                    float(t.loss(out[t.name].float(), targets[t.name][sl].to(device), m)) * cnt
                )
                loss_n[t.name] += cnt
    model.train(was_training)
    arrays = {k: (torch.cat(v).numpy() if v else np.zeros((0,))) for k, v in preds.items()}
    losses = {k: (loss_sum[k] / loss_n[k] if loss_n[k] else float("nan")) for k in loss_sum}
    return arrays, losses


def split_metrics(
    tasks: list[Task],
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
) -> dict[str, dict[str, float]]:
    return {t.name: t.metrics(preds[t.name], labels[t.name], masks[t.name]) for t in tasks}
