"""The function every Ray Train worker runs: one DDP rank of a re-id training run.

Per epoch every rank reports its metrics through ``ray.train.report`` (a barrier); rank 0 also
hands over a checkpoint folder in the project's own format (see ``state.py``). A worker group
that restarts after a failure, or a run started again under the same name, finds the latest
checkpoint through ``ray.train.get_checkpoint()`` and continues from its epoch. After the last
epoch rank 0 exports ``model.pt``, evaluates it, and reports that folder as the final checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from reidstream.assets import Assets
from reidstream.config import Config, build_dataclass
from reidstream.device import autocast, mixed_precision_dtype
from reidstream.training.context import EpochContext, Rank
from reidstream.training.data import TrainData, load_train_data
from reidstream.training.objectives import (
    Objective,
    build_objective,
    objective_class,
    objective_name,
)
from reidstream.training.optim import BudgetClock, Optimization
from reidstream.training.state import (
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_FP32_FILE,
    Progress,
    load_train_state,
    optimization_state,
    resume_model_file,
    save_train_state,
    write_json,
)

log = logging.getLogger(__name__)

def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config["cfg"]`` is the run's full config as a dict."""
    import ray.train
    import ray.train.torch

    cfg: Config = build_dataclass(Config, loop_config["cfg"], where="config")
    ctx = ray.train.get_context()
    rank = Rank(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.manual_seed(cfg.train.seed * 1000 + rank.rank)
    if rank.device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    assets = Assets.from_config(cfg.assets)
    kind = objective_class(cfg.train, cfg.model.name)
    data = load_train_data(cfg, assets, with_sources=kind.uses_sources(cfg))
    if rank.is_main:
        log.info("%s", data.summary())

    model = build_run_model(cfg, data, assets)
    objective = build_objective(model, cfg, data)
    sampler, loader = build_loader(cfg, data, objective_name(cfg.train, cfg.model.name), rank)
    steps_per_epoch = len(sampler)
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)

    checkpoint = ray.train.get_checkpoint()
    resumed = checkpoint is not None
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = restore_weights(Path(folder), objective)

    # DDP wrap (and move to the device) before the optimizer exists, so that its state
    # (fresh or restored) lives on the device of the parameters.
    ddp = ray.train.torch.prepare_model(
        objective,
        parallel_strategy_kwargs={"find_unused_parameters": kind.trains_part_of_model},
    )
    if rank.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clock = BudgetClock(cfg.train.max_minutes)
    precision = mixed_precision_dtype(rank.device, cpu_bf16=True) if cfg.train.amp else None
    opt = Optimization(objective.optimizer_groups(), cfg.train, steps_per_epoch, clock,
                       fp16=precision == torch.float16)
    if rank.is_main:
        log.info("mixed precision: %s", precision or "off (fp32)")
    progress = Progress()
    if state is not None:
        progress = restore_optimization(state, opt)
        if rank.is_main:
            log.info("resuming after epoch %d (step %d)", progress.epoch, progress.step)
    clock.update(progress.train_seconds)  # a resumed run continues where time left it
    start_epoch = progress.epoch
    if progress.finished and not clock.spent:
        progress.finished = False  # the time budget was raised since the run stopped
    trainer = _Stepper(cfg, rank, ddp, objective, opt, clock)
    todo = max(0, cfg.train.epochs - start_epoch) * steps_per_epoch
    trainer.bar = progress_bar(rank, todo, bool(loop_config.get("progress", False)))
    for epoch in range(start_epoch, cfg.train.epochs):
        if progress.finished:
            break
        hook_started = time.perf_counter()
        labels = objective.start_epoch(epoch_context(epoch, rank, objective, data, cfg))
        if labels is not None:
            sampler.relabel(labels)
        # Re-clustering is part of the method's cost: it counts against the time budget.
        progress.train_seconds += time.perf_counter() - hook_started
        sampler.set_epoch(epoch)
        stats, stopped = trainer.run_epoch(loader, epoch, steps_per_epoch, progress, resumed)
        progress.epoch = epoch + 1
        progress.finished = stopped
        metrics = {
            "epoch": progress.epoch,
            "step": progress.step,
            "resumed_from_epoch": start_epoch if resumed else -1,
            "time_budget_hit": int(stopped),
            "lr": opt.lr,
            **stats,
        }
        progress.history.append(dict(metrics))
        report_epoch(metrics, rank, objective, data, cfg, progress, opt)
    if trainer.bar is not None:
        trainer.bar.close()
    blend_with_init(objective.model, cfg, assets, data.cameras)
    ctx = epoch_context(progress.epoch, rank, objective, data, cfg)
    extra_meta = {**objective.export_meta(ctx), **site_calibration_meta(ctx, data, cfg)}
    finish(cfg, rank, objective, data, assets, progress, opt, extra_meta)


def epoch_context(
    epoch: int, rank: Rank, objective: Objective, data: TrainData, cfg: Config
) -> EpochContext:
    from reidstream.training.features import embed_records

    def embed(indices):
        return embed_records(objective.model, data.records, indices, cfg, rank)

    return EpochContext(epoch=epoch, rank=rank, embed=embed)


def site_calibration_meta(ctx: EpochContext, data: TrainData, cfg: Config) -> dict[str, Any]:
    """With an unlabelled target: the final model's site calibration for the checkpoint."""
    if data.target_start < 0 or not cfg.calibration.enabled:
        return {}
    from reidstream.adaptation.calibration import META_KEY, calibrate_records

    target = data.target_records
    vectors = ctx.embed(np.arange(data.target_start, len(data.records))).numpy()
    calib = calibrate_records(vectors, target, data.cameras, data.cannot_link, cfg.calibration)
    if ctx.rank.is_main:
        log.info("%s", calib.describe())
    return {META_KEY: calib.to_meta()}


def build_run_model(cfg: Config, data: TrainData, assets: Assets):
    """``model.*`` with the classifier and SIE table sized by the training data (no
    classifier for objectives that train without one)."""
    from reidstream.models import build_model

    kind = objective_class(cfg.train, cfg.model.name)
    model_cfg = dataclasses.replace(
        cfg.model,
        num_classes=data.num_classes if kind.uses_classifier else 0,
        num_cameras=data.num_cameras if cfg.model.sie else 0,
    )
    model = build_model(model_cfg, assets)
    if cfg.train.init_checkpoint:
        init_from_checkpoint(model, cfg.train.init_checkpoint, assets, data.cameras)
    return model


def init_from_checkpoint(
    model: torch.nn.Module, name: str, assets: Assets, cameras: list[str] | None = None
) -> None:
    """Start from a trained checkpoint's weights (fine-tuning), aligned by
    :func:`reidstream.models.transfer.start_weights` (SIE rows by camera name, classifier heads
    left out where the model has none); weights that do not fit are an error."""
    from reidstream.models import load_checkpoint
    from reidstream.models.transfer import start_weights

    path = assets.asset(name)  # a shipped or asset name, or a path
    try:
        loaded = start_weights(model, load_checkpoint(path), cameras)
    except ValueError as exc:
        raise ValueError(f"train.init_checkpoint {path} does not fit model.* and the training "
                         f"data: {exc}") from exc
    model.load_state_dict(loaded, strict=True)
    log.info("weights initialised from %s", path)


def blend_with_init(
    model: torch.nn.Module, cfg: Config, assets: Assets, cameras: list[str]
) -> None:
    """``train.blend_init``: the trained weights moved that far back towards
    ``train.init_checkpoint`` (WiSE-FT) before export and site calibration."""
    weight = cfg.train.blend_init
    if weight <= 0.0:
        return  # build_trainer checked that init_checkpoint is set when it is not
    from reidstream.models import load_checkpoint
    from reidstream.models.transfer import blend_weights, start_weights

    path = assets.asset(cfg.train.init_checkpoint)
    start = start_weights(model, load_checkpoint(path), cameras)
    moved = blend_weights(model, start, weight)
    log.info("blended %d weight tensors %.2f of the way back to %s", moved, weight, path)


def build_loader(cfg: Config, data: TrainData, objective: str, rank: Rank):
    """Identity-balanced P x K batches (supervised), DIMN episodes, or with an unlabelled
    target P x K batches of its pseudo-labels (after a source batch when there are sources),
    a fixed number of steps per epoch; disjoint per rank."""
    from reidstream.data.sampler import PKBatchSampler
    from reidstream.data.transforms import ImageDataset, build_train_transform
    from reidstream.training.episodes import EpisodeBatchSampler

    transform = build_train_transform(cfg.data, cfg.model.img_height, cfg.model.img_width)
    transfer, target_domain = None, 0
    if data.target_start >= 0 and cfg.data.camera_transfer > 0:
        transfer = camera_colour_transfer(data, cfg.data.camera_transfer, cfg.train.seed)
        target_domain = data.records[data.target_start].domain
    dataset = ImageDataset(data.records, transform, transfer, target_domain)
    if data.target_start >= 0:
        sampler = target_sampler(cfg, data, rank)
    elif objective == "episodic":
        sampler = EpisodeBatchSampler(
            data.records, cfg.train.episode_ids, rank.world, rank.rank, cfg.train.seed
        )
    else:
        sampler = PKBatchSampler(
            dataset.pids,
            cfg.data.ids_per_batch,
            cfg.data.images_per_id,
            num_replicas=rank.world,
            rank=rank.rank,
            seed=cfg.train.seed,
        )
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=rank.device.type == "cuda",
        persistent_workers=workers > 0,
    )
    return sampler, loader


def camera_colour_transfer(data: TrainData, p: float, seed: int, per_camera: int = 200):
    """The target cameras' colour statistics, from up to ``per_camera`` crops of each."""
    from reidstream.data.transforms import CameraColourTransfer, lab_statistics, load_record_image

    rng = np.random.default_rng(seed)
    by_camera: dict[int, list] = {}
    for rec in data.target_records:
        by_camera.setdefault(rec.camid, []).append(rec)
    stats = {}
    for camid, recs in by_camera.items():
        chosen = rng.choice(len(recs), size=min(per_camera, len(recs)), replace=False)
        images = [load_record_image(recs[i]) for i in chosen]
        stats[camid] = lab_statistics(images)
    return CameraColourTransfer(p, stats)


def target_sampler(cfg: Config, data: TrainData, rank: Rank):
    """Batches over the target's pseudo-labels (relabelled every epoch by the objective)."""
    from reidstream.data.sampler import ConcatBatchSampler, CycledBatchSampler, PKBatchSampler

    def pk(labels) -> PKBatchSampler:
        return PKBatchSampler(
            labels, cfg.data.ids_per_batch, cfg.data.images_per_id,
            num_replicas=rank.world, rank=rank.rank, seed=cfg.train.seed,
        )

    n_target = len(data.target_records)
    sampler = pk(range(n_target))  # placeholder labels until the first clustering
    if data.target_start > 0:
        source = pk([r.pid for r in data.source_records])
        sampler = ConcatBatchSampler([source, sampler], [0, data.target_start])
    steps = cfg.train.max_steps_per_epoch
    if steps <= 0:  # about one pass over the target per epoch
        per_step = cfg.data.ids_per_batch * cfg.data.images_per_id * rank.world
        steps = max(1, n_target // per_step)
    return CycledBatchSampler(sampler, steps)


def restore_weights(folder: Path, objective: Objective) -> dict[str, Any]:
    """Model weights and loss state from a checkpoint folder of this run; returns the rest of
    the training state for :func:`restore_optimization`."""
    from reidstream.models import load_checkpoint

    loaded = load_checkpoint(resume_model_file(folder))
    objective.model.load_state_dict(loaded.model.state_dict(), strict=True)
    state = load_train_state(folder)
    objective.load_loss_state_dict(state["loss_state"])
    return state


def restore_optimization(state: dict[str, Any], opt: Optimization) -> Progress:
    """Optimizer moments, LR schedule positions, grad scales and progress of a checkpoint.

    A run extended to more epochs keeps its step count, so the cosine continues on the
    longer schedule from where the run stopped.
    """
    opt.load_state_dict(optimization_state(state))
    return Progress.from_dict(state["progress"])


class _Stepper:
    """One epoch of optimizer steps, with the progress bar, time budget and test fault hook."""

    def __init__(self, cfg, rank, ddp, objective, opt, clock):
        self.cfg, self.rank, self.ddp, self.objective = cfg, rank, ddp, objective
        self.opt = opt
        self.clock = clock
        self.bar = None
        # chosen once, before any step: a layer new to this run learns its statistics throughout
        self.frozen_bn = batchnorm_with_statistics(objective) if cfg.train.freeze_bn_stats else []

    def run_epoch(
        self, loader: DataLoader, epoch: int, steps: int, progress: Progress, resumed: bool
    ) -> tuple[dict[str, float], bool]:
        cfg, rank = self.cfg.train, self.rank
        self.ddp.train()
        for layer in self.frozen_bn:  # train.freeze_bn_stats: they keep their statistics
            layer.eval()
        # summed on the device: a .item() per step would stall a GPU every iteration
        sums: dict[str, torch.Tensor] = {}
        images = count = 0
        stopped = False
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
        log_every = max(1, steps // 10)  # progress in logs when there is no bar to draw
        start = time.perf_counter()
        it = iter(loader)
        for _ in range(steps):
            if cfg.fail_at_step >= 0 and progress.step == cfg.fail_at_step and not resumed:
                simulate_crash(rank)
            batch, pids, camids, index = next(it)
            batch = batch.to(rank.device, non_blocking=True)
            pids = pids.to(rank.device, non_blocking=True)
            camids = camids.to(rank.device, non_blocking=True)

            def forward(batch=batch, pids=pids, camids=camids, index=index, **phase):
                with autocast(rank.device, cfg.amp, cpu_bf16=True):
                    return self.ddp(batch, pids, camids, index, **phase)

            loss, parts = self.objective.train_step(forward, self.opt)
            self.opt.schedule()
            self.objective.after_step()
            progress.step += 1
            images += batch.shape[0]
            for name, value in [("loss", loss), *parts.items()]:
                value = value.detach().double()
                sums[name] = sums[name] + value if name in sums else value
            count += 1
            if self.bar is not None:
                self.bar.update(1)
            elif rank.is_main and count % log_every == 0 and count < steps:
                rate = images * rank.world / (time.perf_counter() - start)
                log.info(
                    "epoch %d step %d/%d loss %.4f (%.1f images/s)",
                    epoch + 1,
                    count,
                    steps,
                    float(sums["loss"]) / count,
                    rate,
                )
            if self.clock.limited:
                elapsed = progress.train_seconds + time.perf_counter() - start
                self.clock.update(all_ranks_max(rank, elapsed))
                if self.clock.spent:
                    stopped = True
                    break
        seconds = time.perf_counter() - start
        progress.train_seconds += seconds
        stats = mean_over_ranks(rank, sums, count)
        stats["images_per_s"] = images * rank.world / max(seconds, 1e-9)
        stats["epoch_seconds"] = seconds
        stats["train_seconds"] = progress.train_seconds
        return stats, stopped


def batchnorm_with_statistics(module: torch.nn.Module) -> list[torch.nn.Module]:
    """BatchNorm layers that already hold running statistics (from ``train.init_checkpoint``).

    ``train.freeze_bn_stats`` keeps theirs (their affine weights still train): fine-tuning on
    another domain would otherwise pull every running mean and variance towards the new
    images, which is much of what an adapted model forgets of its source. A layer new to the
    run (PAUL's patch generator) has seen no batch yet and learns its own.
    """
    return [
        layer
        for layer in module.modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
        and (layer.num_batches_tracked is None or int(layer.num_batches_tracked) > 0)
    ]


def simulate_crash(rank: Rank) -> None:
    """``train.fail_at_step``: the last rank dies as a killed process would (no cleanup).

    It first waits until Ray Train has committed every checkpoint reported so far: a crash in
    the instant between ``report`` and the commit would lose that checkpoint, and a test of
    "resumes from the last checkpoint" must know which checkpoint is the last one.
    """
    if rank.rank != rank.world - 1:
        return
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )
    log.warning("train.fail_at_step reached: rank %d kills itself", rank.rank)
    os.kill(os.getpid(), signal.SIGKILL)


def all_ranks_max(rank: Rank, value: float) -> float:
    """The largest of every rank's ``value``: one time-budget reading for all ranks, so they
    share one lr and stop at the same step (none waits in a collective for the others)."""
    if rank.world == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=rank.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def mean_over_ranks(rank: Rank, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Per-step means of every summed quantity, averaged over all ranks."""
    keys = sorted(sums)
    values = torch.stack(
        [sums[k].to(rank.device) for k in keys]
        + [torch.tensor(float(count), dtype=torch.float64, device=rank.device)]
    )
    if rank.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    *totals, n = values.tolist()
    return {k: v / max(n, 1.0) for k, v in zip(keys, totals, strict=True)}


def progress_bar(rank: Rank, total: int, enabled: bool):
    """One tqdm bar for the run on rank 0, drawn on the driver's terminal by Ray's tqdm.

    The driver enables it only when its stdout is a terminal: in logs (CI, batch jobs) the
    per-epoch log lines say the same without a redraw per step.
    """
    if not (enabled and rank.is_main and total > 0):
        return None
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=total, desc="training", unit="step")


def _meta(cfg: Config, data: TrainData, progress: Progress) -> dict[str, Any]:
    meta = {
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "train_sources": data.sources,
        "train_identities": data.num_classes,
        "train_images": len(data.records),
        "epoch": progress.epoch,
        "step": progress.step,
        "train_seconds": round(progress.train_seconds, 1),
        "train_config": dataclasses.asdict(cfg.train),
        "data_config": dataclasses.asdict(cfg.data),
    }
    if data.target_start >= 0:
        meta["train_target"] = data.target
        meta["train_target_images"] = len(data.target_records)
        meta["objective"] = objective_name(cfg.train, cfg.model.name)
    return meta


def write_checkpoint(
    folder: Path, objective, data, cfg, progress, opt, half=False,
    extra_meta: dict[str, Any] | None = None,
) -> None:
    from reidstream.models import save_checkpoint

    meta = {**_meta(cfg, data, progress), **(extra_meta or {})}
    save_checkpoint(folder / MODEL_FILE, objective.model, data.cameras, meta, half=half)
    if half:
        save_checkpoint(folder / MODEL_FP32_FILE, objective.model, data.cameras, meta)
    save_train_state(folder, progress, opt.state_dict(), objective.loss_state_dict())
    for name, (grid, per_row) in objective.pictures().items():  # e.g. DG-Net's generations
        from torchvision.utils import save_image

        save_image(grid, folder / name, nrow=per_row, padding=2)


def report_epoch(metrics, rank, objective, data, cfg, progress, opt):
    import ray.train

    if not rank.is_main:
        ray.train.report(metrics)
        return
    log.info(
        "epoch %d step %d loss %.4f (%.1f images/s)",
        metrics["epoch"],
        metrics["step"],
        metrics["loss"],
        metrics["images_per_s"],
    )
    with tempfile.TemporaryDirectory(prefix="reidstream-ckpt-") as tmp:
        folder = Path(tmp)
        write_checkpoint(folder, objective, data, cfg, progress, opt)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_epoch{progress.epoch:04d}",
        )


def finish(cfg, rank, objective, data, assets, progress, opt, extra_meta=None) -> None:
    """Rank 0 exports ``model.pt``, evaluates it and reports both as the final checkpoint."""
    import ray.train

    if not rank.is_main:
        ray.train.report({"final": 1, "epoch": progress.epoch, "step": progress.step})
        return
    with tempfile.TemporaryDirectory(prefix="reidstream-final-") as tmp:
        folder = Path(tmp)
        write_checkpoint(
            folder,
            objective,
            data,
            cfg,
            progress,
            opt,
            half=cfg.train.export_half,
            extra_meta=extra_meta,
        )
        write_json(folder / HISTORY_FILE, progress.history)
        metrics: dict[str, Any] = {"final": 1, "epoch": progress.epoch, "step": progress.step}
        if cfg.train.eval_at_end:
            metrics.update(evaluate_export(cfg, folder / MODEL_FILE, folder, assets))
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_final{progress.epoch:04d}",
        )


def evaluate_export(cfg: Config, model_path: Path, out_dir: Path, assets: Assets) -> dict:
    """Evaluate the exported checkpoint as serving will load it; metrics.json beside it."""
    from reidstream.evaluation.evaluate import evaluate, save_report

    eval_cfg = dataclasses.replace(
        cfg.eval,
        checkpoint=str(model_path),
        dataset=cfg.train.eval_dataset or cfg.eval.dataset,
    )
    report = evaluate(dataclasses.replace(cfg, eval=eval_cfg), assets, progress=False)
    save_report(report, out_dir, cfg.eval.plot_queries, cfg.eval.plot_topk)
    log.info("\n%s", report.table())
    m = report.metrics
    assert (out_dir / METRICS_FILE).is_file()
    return {
        "eval_dataset": report.dataset,
        "rank1": float(m.rank(1)),
        "mAP": float(m.mAP),
        "mINP": float(m.mINP),
    }
