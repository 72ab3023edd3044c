"""DDRL against the same network without its image-level sub-network, at equal training time,
on the cuhk03 infrared PROXY, scored in both directions. Proxy figures, not infrared results
(docs/infrared.md says what the proxy models and what it cannot).

    python bench/ddrl_proxy.py --minutes 12 [section.key=value ...]

Three real ``reidstream train`` runs of ``train/configs/ddrl_cpu.yaml`` with the same time budget
(``train.max_minutes``; the lr schedule spans it): ``ddrl`` (translator + feature-level network,
trained jointly; translations through the config's learned gate), ``ddrl-ungated`` (the
translations fed as they are, as the paper does) and ``feature-only``
(``model.ddrl_translator_base=0``: the same MobileNetV2, head and losses on the images as they
are, infrared as three equal channels). Each export is
then evaluated on the proxy's test split, visible -> infrared (``v2i``) and infrared -> visible
(``i2v``), without re-ranking. Results go to ``runs/ddrl_proxy/<minutes>min/results.json``; a
finished arm is not trained again when the script is rerun.

``--equal-steps`` adds ``feature-only-steps``: the baseline given DDRL's number of optimizer
steps instead of its minutes (schedule over epochs, no time budget), which separates what the
image-level sub-network does per step from what it costs in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "train" / "configs" / "ddrl_cpu.yaml"
ARMS = {"ddrl": [], "ddrl-ungated": ["model.ddrl_gate_init=0"],
        "feature-only": ["model.ddrl_translator_base=0"]}
PROTOCOLS = ("v2i", "i2v")


def equal_steps(ddrl_steps: int, per_epoch: int = 50) -> list[str]:
    """Overrides that train about ``ddrl_steps`` steps (epochs of at most ``per_epoch``)."""
    epochs = -(-ddrl_steps // per_epoch)
    return ["train.max_minutes=0", f"train.epochs={epochs}",
            f"train.max_steps_per_epoch={-(-ddrl_steps // epochs)}"]


def run_arm(name: str, minutes: float, out_dir: Path, extra: list[str]) -> dict:
    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.evaluation.evaluate import evaluate
    from reidstream.training.job import run_training

    cfg = load_config(CONFIG, [f"train.max_minutes={minutes}", *ARMS[name],
                               "train.max_failures=0", "train.progress=false",
                               f"train.storage_path={out_dir}", f"train.name={name}", *extra])
    outcome = run_training(cfg)
    history = outcome.history
    row = {"arm": name, "steps": history[-1]["step"],
           "train_minutes": history[-1]["train_seconds"] / 60,
           "images_per_s": sum(h["images_per_s"] * h["epoch_seconds"] for h in history)
           / max(1e-9, sum(h["epoch_seconds"] for h in history))}
    for protocol in PROTOCOLS:
        eval_cfg = dataclasses.replace(
            cfg.eval, dataset=cfg.train.eval_dataset or cfg.eval.dataset, protocol=protocol,
            rerank=False, plot_queries=0,
        )
        run = dataclasses.replace(
            cfg, eval=eval_cfg,
            embed=dataclasses.replace(cfg.embed, checkpoint=str(outcome.model_path)),
        )
        metrics = evaluate(run, Assets.from_config(cfg.assets), progress=False).metrics
        row[protocol] = {"rank1": metrics.rank(1), "mAP": metrics.mAP}
    return row


def format_row(r: dict) -> str:
    cells = " | ".join(f"{100 * r[p]['rank1']:.2f} | {100 * r[p]['mAP']:.2f}" for p in PROTOCOLS)
    return f"| {r['arm']} | {r['steps']} | {r['images_per_s']:.1f} | {cells} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per arm")
    parser.add_argument("--only", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "ddrl_proxy"))
    parser.add_argument("--equal-steps", action="store_true",
                        help="also the baseline at DDRL's step count (after the ddrl arm)")
    args = parser.parse_args(argv)

    from reidstream.training.job import ensure_ray

    out_dir = Path(args.out).resolve() / f"{args.minutes:g}min"
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    ensure_ray("")
    for name in args.only:
        if name not in results:
            results[name] = run_arm(name, args.minutes, out_dir, args.overrides)
            results_file.write_text(json.dumps(results, indent=2))
        print(format_row(results[name]), flush=True)
    if args.equal_steps and "ddrl" in results:
        name = "feature-only-steps"
        ARMS[name] = [*ARMS["feature-only"], *equal_steps(results["ddrl"]["steps"])]
        if name not in results:
            results[name] = run_arm(name, args.minutes, out_dir, args.overrides)
            results_file.write_text(json.dumps(results, indent=2))
        args.only = [*args.only, name]
    load = os.getloadavg()[0]
    print(f"\n{args.minutes:g} training minutes per arm; load avg {load:.1f}; cuhk03-detected "
          "test, camera 2 as the infrared PROXY; no re-ranking")
    print("| arm | steps | images/s | v2i Rank-1 % | v2i mAP % | i2v Rank-1 % | i2v mAP % |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        print(format_row(results[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
