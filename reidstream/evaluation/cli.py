"""``reidstream eval [CONFIG.yaml] [section.key=value ...]``: evaluate a re-id model.

Prints Rank-1/5/10, mAP and mINP (and the re-ranked figures when ``eval.rerank=true``),
writes metrics.json, cmc.png and ranked_list.png under ``eval.output_dir``. ``eval.dataset``
needs its query and gallery folders only (a site's test set has no train split); a missing one
is an error that names the folder.
Heavy imports stay inside the function so ``reidstream --help`` stays fast.
"""

from __future__ import annotations

import argparse


def add_arguments_run_eval(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )


def run_eval(args: argparse.Namespace) -> int:
    import time

    from reidstream.assets import Assets
    from reidstream.cli import load_cli_config
    from reidstream.evaluation.evaluate import evaluate, save_report

    cfg = load_cli_config(args)
    start = time.perf_counter()
    report = evaluate(cfg, Assets.from_config(cfg.assets), progress=not args.no_progress)
    paths = save_report(report, cfg.eval.output_dir, cfg.eval.plot_queries, cfg.eval.plot_topk)
    print(report.table())
    print(f"wall time {time.perf_counter() - start:.1f} s; wrote:")
    for name, path in paths.items():
        print(f"  {name:<12} {path}")
    return 0
