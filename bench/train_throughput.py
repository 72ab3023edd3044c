"""Training throughput (images/s) of a config with 1, 2, ... Ray Train workers.

    python bench/train_throughput.py train/configs/transreid_hybrid_cpu.yaml --workers 1 2 \
        --steps 6 --cpus 2 [section.key=value ...]

Each worker count is a real ``reidstream train`` run (TorchTrainer, DDP, the PK sampler, the
data loader, per-epoch checkpoints) of two short epochs with no final evaluation; the number is
epoch 2's images/s summed over the ranks (epoch 1 pays for start-up, first-iteration
allocations and the loader warming up). The CPUs are split evenly over the workers
(``--cpus`` in total), so 1 x 2 threads is compared with 2 x 1 thread on the same cores.
Each rank takes its own P x K batch, so the global batch grows with the workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(config: str | None, overrides: list[str], workers: int, cpus: float, steps: int):
    from reidstream.config import load_config
    from reidstream.training.job import run_training

    with tempfile.TemporaryDirectory(prefix="reidstream-bench-") as tmp:
        cfg = load_config(
            config,
            [
                *overrides,
                f"train.workers={workers}",
                f"train.cpus_per_worker={cpus / workers}",
                "train.epochs=2",
                f"train.max_steps_per_epoch={steps}",
                "train.eval_at_end=false",
                "train.max_failures=0",
                "train.fail_at_step=-1",
                "train.progress=false",
                f"train.storage_path={tmp}",
                f"train.name=bench-{workers}",
            ],
        )
        start = time.perf_counter()
        outcome = run_training(cfg)
        wall = time.perf_counter() - start
    timed = outcome.history[-1]
    batch = cfg.data.ids_per_batch * cfg.data.images_per_id
    if cfg.model.name == "dimn" or cfg.train.objective == "episodic":
        batch = 2 * cfg.train.episode_ids
    return {
        "workers": workers,
        "cpus_per_worker": cpus / workers,
        "global_batch": batch * workers,
        "s_per_step": timed["epoch_seconds"] / steps,
        "images_per_s": timed["images_per_s"],
        "run_wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] [k=v ...]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=6, help="timed steps (epoch 2)")
    parser.add_argument("--address", default="", help="Ray cluster to join; '' starts one")
    args = parser.parse_args(argv)

    from reidstream.cli import split_config_args
    from reidstream.training.job import ensure_ray

    config, overrides = split_config_args(args.config_and_overrides)
    ensure_ray(args.address)
    rows = [measure(config, overrides, n, args.cpus, args.steps) for n in args.workers]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nconfig {config} {' '.join(overrides)}; {args.cpus:g} CPUs; load avg {load:.1f}")
    print("| workers | CPUs/worker | global batch | s/step | images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['cpus_per_worker']:g} | {r['global_batch']} | "
            f"{r['s_per_step']:.2f} | {r['images_per_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
