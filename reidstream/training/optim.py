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
    A parameter group may end its cosine elsewhere (its ``final_lr_factor`` key; 1.0 keeps
    it flat after warm-up): a GAN's generator that must keep learning while the re-id model
    anneals.
    """
    finals = [g.get("final_lr_factor", cfg.final_lr_factor) for g in optimizer.param_groups]
    if clock is not None and clock.limited:
        share = min(1.0, cfg.warmup_epochs / max(cfg.epochs, 1))
        resolution = 1_000_000  # warmup_cosine works on integer steps

        def by_time(final: float):
            return lambda _step: warmup_cosine(
                int(clock.fraction * resolution), resolution, int(share * resolution),
                cfg.warmup_factor, final,
            )

        return torch.optim.lr_scheduler.LambdaLR(optimizer, [by_time(f) for f in finals])

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def by_step(final: float):
        return lambda step: warmup_cosine(step, total, warmup, cfg.warmup_factor, final)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [by_step(f) for f in finals])


class Optimization:
    """A run's optimizers by name, each with its LR schedule and loss scaler.

    Most objectives train one (``"model"``); a GAN trains its generator and discriminator with
    one each and steps them in turn (:meth:`Objective.train_step`). Every rank builds the same
    names from the same parameters, so DDP's gradient averaging applies to each step alike.
    """

    def __init__(
        self,
        groups: dict[str, list[dict]],
        cfg: TrainConfig,
        steps_per_epoch: int,
        clock: BudgetClock | None,
        fp16: bool,
    ) -> None:
        if not groups:
            raise ValueError("an objective must name at least one optimizer")
        self.grad_clip = cfg.grad_clip
        self.optimizers = {name: build_optimizer(g, cfg) for name, g in groups.items()}
        self.schedulers = {name: build_scheduler(o, cfg, steps_per_epoch, clock)
                           for name, o in self.optimizers.items()}
        # bf16 keeps fp32's exponent range, so only fp16 needs loss scaling
        self.scalers = {name: torch.amp.GradScaler("cuda", enabled=fp16) for name in groups}

    def step(self, names: str | tuple[str, ...], loss: torch.Tensor) -> None:
        """Backward ``loss`` once and step the optimizer(s) ``names`` (their gradients only:
        zeroed first). Several names share one loss (a GAN's generator and the encoder it
        trains with), and then the first one's loss scaler."""
        names = (names,) if isinstance(names, str) else tuple(names)
        optimizers = [self.optimizers[n] for n in names]
        scaler = self.scalers[names[0]]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for optimizer in optimizers:
            if self.grad_clip > 0:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            scaler.step(optimizer)
        scaler.update()

    def schedule(self) -> None:
        """Every schedule one iteration on (after each batch, whatever was stepped)."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    @property
    def lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def state_dict(self) -> dict[str, dict]:
        return {name: {"optimizer": self.optimizers[name].state_dict(),
                       "scheduler": self.schedulers[name].state_dict(),
                       "scaler": self.scalers[name].state_dict()} for name in self.optimizers}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        if set(state) != set(self.optimizers):
            raise KeyError(f"training state has optimizers {sorted(state)}, this objective "
                           f"{sorted(self.optimizers)}")
        for name, parts in state.items():
            self.optimizers[name].load_state_dict(parts["optimizer"])
            self.schedulers[name].load_state_dict(parts["scheduler"])
            self.scalers[name].load_state_dict(parts["scaler"])
