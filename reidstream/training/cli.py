"""``reidstream train CONFIG.yaml [section.key=value ...]``: a Ray Train re-id training run.

``--resume RUN_DIR`` continues a run from its latest checkpoint with the config it was started
with (overrides still apply, e.g. ``train.epochs=120`` to train longer); ``--address`` joins an
existing Ray cluster instead of starting a local one. Heavy imports stay inside the functions
so ``reidstream --help`` stays fast.
"""

from __future__ import annotations

import argparse


def add_arguments_run_train(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default="",
        help="continue the run in RUN_DIR from its latest checkpoint (its config.yaml is used)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. auto, ray://head:10001); overrides train.address",
    )
    parser.add_argument("--workers", type=int, default=None, help="overrides train.workers")


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from reidstream.cli import load_cli_config, split_config_args
    from reidstream.training.job import config_for_resume, run_training

    if args.resume:
        path, overrides = split_config_args(args.config_and_overrides)
        if path is not None:
            raise ValueError("--resume takes the run's own config.yaml; give only overrides")
        cfg = config_for_resume(args.resume, overrides)
    else:
        cfg = load_cli_config(args)
    changes = {}
    if args.address is not None:
        changes["address"] = args.address
    if args.workers is not None:
        changes["workers"] = args.workers
    if changes:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
    outcome = run_training(cfg, resume=bool(args.resume))
    m = outcome.metrics
    print(f"run folder: {outcome.run_dir}")
    print(f"epochs {m.get('epoch')}, steps {m.get('step')}")
    if "rank1" in m:
        print(
            f"{m['eval_dataset']}: Rank-1 {100 * m['rank1']:.2f}  mAP {100 * m['mAP']:.2f}  "
            f"mINP {100 * m['mINP']:.2f}"
        )
    if outcome.model_path is not None:
        print(f"model: {outcome.model_path}")
    return 0
