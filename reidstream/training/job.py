"""The driver side of a training run: Ray, the TorchTrainer, and the run folder.

A run lives in ``<train.storage_path>/<train.name>/``: ``config.yaml`` (the full config the run
was started with), Ray Train's checkpoint folders, and after the end ``model.pt`` (exported,
fp16 when ``train.export_half``), ``metrics.json``, ``history.json`` and the evaluation figures.
Starting a run again under the same folder resumes it: Ray Train finds its checkpoint snapshot
there and the workers continue from the latest checkpoint (``reidstream train --resume DIR``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reidstream.config import Config, load_config
from reidstream.training.state import HISTORY_FILE, METRICS_FILE, MODEL_FILE

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"
EXPORTED_FILES = (MODEL_FILE, METRICS_FILE, HISTORY_FILE, "cmc.png", "ranked_list.png")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainOutcome:
    run_dir: Path
    model_path: Path | None
    metrics: dict[str, Any]  # the final report: epoch, step and the evaluation figures
    history: list[dict[str, Any]]


def is_uri(path: str) -> bool:
    return "://" in path


def run_folder(cfg: Config) -> tuple[str, str]:
    """(storage path, run name); a local storage path is made absolute, as Ray needs."""
    storage = cfg.train.storage_path
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    name = cfg.train.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return storage, name


def config_for_resume(run_dir: str | Path, overrides: list[str]) -> Config:
    """The config a run was started with (``RUN_DIR/config.yaml``), plus ``overrides`` such
    as ``train.epochs=120`` to extend it; storage path and name point at ``run_dir``."""
    run_dir = Path(run_dir).expanduser().resolve()
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a training run folder ({RUN_CONFIG_FILE} missing)"
        )
    cfg = load_config(path, overrides)
    train = dataclasses.replace(cfg.train, storage_path=str(run_dir.parent), name=run_dir.name)
    return dataclasses.replace(cfg, train=train)


def ensure_ray(address: str) -> None:
    """Join ``address`` when given, else start (or reuse) a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):  # a job submitted to a cluster has RAY_ADDRESS
        ray.init(address=address or None)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False)


def use_gpu(device: str, workers: int, gpus_per_worker: float) -> bool:
    if device not in DEVICES:
        raise ValueError(f"train.device must be one of {DEVICES}, got {device!r}")
    if device != "auto":
        return device == "cuda"
    import ray

    return ray.cluster_resources().get("GPU", 0.0) >= workers * gpus_per_worker


def build_trainer(cfg: Config, storage: str, name: str):
    """The TorchTrainer: NCCL on GPUs, gloo on CPUs, one DDP rank per Ray Train worker."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from reidstream.training.loop import train_loop_per_worker

    t = cfg.train
    if t.workers < 1:
        raise ValueError(f"train.workers must be >= 1, got {t.workers}")
    if not 0.0 <= t.blend_init <= 1.0:
        raise ValueError(f"train.blend_init must be in [0, 1], got {t.blend_init}")
    if t.blend_init > 0.0 and not t.init_checkpoint:
        raise ValueError("train.blend_init needs train.init_checkpoint (the weights to blend with)")
    gpu = use_gpu(t.device, t.workers, t.gpus_per_worker)
    resources = {"CPU": t.cpus_per_worker}
    if gpu:
        resources["GPU"] = t.gpus_per_worker
    cluster = bool(t.address or os.environ.get("RAY_ADDRESS"))
    check_resources(resources, t.workers, can_scale=cluster)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "progress": t.progress and sys.stdout.isatty()},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            storage_path=storage,
            name=name,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(1, t.keep_checkpoints)),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )


def check_resources(per_worker: dict[str, float], workers: int, can_scale: bool) -> None:
    """Fail fast where Ray Train would wait forever: a local Ray that is too small for the
    workers asked for (a cluster may autoscale, so there it is only a warning)."""
    import ray

    have = ray.cluster_resources()
    short = [
        f"{workers} x {amount:g} {name} (the cluster has {have.get(name, 0.0):g})"
        for name, amount in per_worker.items()
        if have.get(name, 0.0) < workers * amount
    ]
    if not short:
        return
    msg = f"training needs {', '.join(short)}: lower train.workers / train.cpus_per_worker"
    if can_scale:
        log.warning("%s, or the cluster must scale up", msg)
        return
    raise ValueError(msg)


def absolute_paths(cfg: Config) -> Config:
    """Local paths the user gave relative to where they are, made absolute: Ray Train workers
    run in another folder. Names that are not existing paths (a dataset or asset name, a
    URI) stay as they are."""

    def fix(value: str) -> str:
        if not value or is_uri(value) or Path(value).is_absolute():
            return value
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value

    return dataclasses.replace(
        cfg,
        assets=dataclasses.replace(
            cfg.assets, assets_dir=fix(cfg.assets.assets_dir), data_dir=fix(cfg.assets.data_dir)
        ),
        data=dataclasses.replace(cfg.data, target=fix(cfg.data.target)),
        train=dataclasses.replace(cfg.train, init_checkpoint=fix(cfg.train.init_checkpoint)),
    )


def _worker_env() -> dict[str, str]:
    keys = ("REIDSTREAM_ASSETS", "REIDSTREAM_DATA", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")
    return {k: os.environ[k] for k in keys if k in os.environ}


def run_training(cfg: Config, resume: bool = False) -> TrainOutcome:
    """Train as ``cfg`` says, on the Ray cluster at ``train.address`` (or a local one).

    A run folder that holds a run already is continued only with ``resume``; otherwise that
    is an error rather than a silent continuation of an old run under a reused name.
    """
    storage, name = run_folder(cfg)
    cfg = absolute_paths(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, name=name)))
    if not is_uri(storage):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, storage_path=storage))
    run_dir = Path(storage) / name
    if not is_uri(storage) and not resume and (run_dir / RUN_CONFIG_FILE).exists():
        raise ValueError(
            f"run folder {run_dir} holds a run already: continue it with "
            f"`reidstream train --resume {run_dir}` or pick another train.name"
        )
    ensure_ray(cfg.train.address)
    trainer = build_trainer(cfg, storage, name)
    if not is_uri(storage):
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / RUN_CONFIG_FILE).open("w") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    log.info(
        "training %s with %d worker(s); run folder %s", cfg.model.name, cfg.train.workers, run_dir
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return collect_outcome(result, run_dir, is_uri(storage))


def collect_outcome(result, run_dir: Path, remote: bool) -> TrainOutcome:
    """Copy the final checkpoint's export (model.pt, metrics, history, figures) to the run
    folder, where people and the embedder look for them. With remote storage they stay in
    the final checkpoint folder there (its path is logged)."""
    metrics = dict(result.metrics or {})
    if result.checkpoint is None:
        return TrainOutcome(run_dir, None, metrics, [])
    if remote:
        log.info("final checkpoint (model.pt, metrics.json): %s", result.checkpoint.path)
    with result.checkpoint.as_directory() as folder:
        folder = Path(folder)
        history_path = folder / HISTORY_FILE
        history = json.loads(history_path.read_text()) if history_path.is_file() else []
        if remote:
            return TrainOutcome(run_dir, None, metrics, history)
        pictures = [p.name for p in folder.glob("*.png")]  # the objective's grids too
        for fname in dict.fromkeys([*EXPORTED_FILES, *pictures]):
            if (folder / fname).is_file():
                shutil.copy2(folder / fname, run_dir / fname)
    model = run_dir / MODEL_FILE
    return TrainOutcome(run_dir, model if model.is_file() else None, metrics, history)
