"""Optimizer and learning-rate schedule: linear warm-up, then cosine decay, per iteration."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from reidstream.config import TrainConfig

OPTIMIZERS = ("adamw", "sgd")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float, final_factor: float
) -> float:
    """LR multiplier at ``step``: ``warmup_factor`` -> 1 linearly, then cosine to ``final``.

    Warm-up matters for ViTs: full-size steps on a freshly initialised head wreck the
    pre-trained attention weights in the first iterations.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(
    module: nn.Module, cfg: TrainConfig, center_params: Iterable[nn.Parameter] = ()
) -> list[dict]:
    """Weight decay on weights only; biases, norms, tokens and embeddings stay undecayed.

    Decaying a LayerNorm gain or a position/camera embedding towards zero only hurts; the
    center-loss centers get their own learning rate, as in the bag-of-tricks recipe.
    """
    center_ids = {id(p) for p in center_params}
    decay, no_decay, centers = [], [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in center_ids:
            centers.append(param)
        elif param.ndim <= 1 or name.endswith(".bias") or "token" in name or "embed" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr},
    ]
    if centers:
        groups.append({"params": centers, "weight_decay": 0.0, "lr": cfg.center_lr})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    raise ValueError(f"train.optimizer {cfg.optimizer!r}: expected one of {OPTIMIZERS}")


class BudgetClock:
    """A run's time budget (``train.max_minutes``; 0: none) and the share of it spent, as the
    training loop last agreed it over all ranks."""

    def __init__(self, minutes: float) -> None:
        self.budget_s = 60.0 * minutes
        self.fraction = 0.0

    @property
    def limited(self) -> bool:
        return self.budget_s > 0

    @property
    def spent(self) -> bool:
        return self.limited and self.fraction >= 1.0

    def update(self, train_seconds: float) -> None:
        if self.limited:
            self.fraction = train_seconds / self.budget_s


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps_per_epoch: int,
    clock: BudgetClock | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine over ``epochs``; with a clock on a budget, over the time budget.

    On a time budget the lr follows the share of the budget spent (warm-up takes
    ``warmup_epochs / epochs`` of it), so every run of an equal-time comparison anneals fully
    however fast its model steps; the run ends at the budget or after ``epochs``, first wins.
    """
    if clock is not None and clock.limited:
        share = min(1.0, cfg.warmup_epochs / max(cfg.epochs, 1))
        resolution = 1_000_000  # warmup_cosine works on integer steps

        def by_time(_step: int) -> float:
            return warmup_cosine(
                int(clock.fraction * resolution),
                resolution,
                int(share * resolution),
                cfg.warmup_factor,
                cfg.final_lr_factor,
            )

        return torch.optim.lr_scheduler.LambdaLR(optimizer, by_time)

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def by_step(step: int) -> float:
        return warmup_cosine(step, total, warmup, cfg.warmup_factor, cfg.final_lr_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, by_step)
