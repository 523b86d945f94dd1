"""Optimizers and learning-rate schedules from the Spec."""

from __future__ import annotations

import math
from typing import Any

import torch

from hydranet.spec import TrainSpec


def build_optimizer(
    params: list[torch.nn.Parameter] | list[dict[str, Any]],
    cfg: TrainSpec,
    device: torch.device,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """``capturable``: Adam/AdamW safe inside a CUDA graph, with the learning rate as a device
    tensor that the scheduler updates in place (a float would be frozen into the graph).
    ``params`` may be param groups; one with an ``lr_scale`` trains at that times the rate."""
    # fused kernels: on CUDA one launch per step instead of one per parameter; on the CPU one
    # loop over all parameters (census MMoE's 15 tensors: Adam 0.54 ms -> 0.11 ms per step on
    # 2 threads; the values agree with the per-tensor loop to rounding, ~5e-10 after 5 steps)
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):
        fused = {}  # FSDP-sharded parameters: the fused kernels take no DTensor
    lr: float | torch.Tensor = cfg.lr
    if capturable:
        fused["capturable"] = True
        lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
    params = [
        {**p, "lr": lr * p["lr_scale"] if capturable else cfg.lr * p["lr_scale"]}
        if isinstance(p, dict) and "lr_scale" in p
        else p
        for p in params
    ]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused
    )


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant, cosine or linear decay to ``min_lr_ratio`` of the base rate."""
    sched = cfg.schedule
    warm = sched.warmup_steps
    floor = sched.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if sched.kind == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def device_lr_(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """After ``load_state_dict``: the learning rates back as device tensors (capturable optimizers)."""
    for group in opt.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = torch.tensor(float(group[key]), dtype=torch.float32, device=device)
