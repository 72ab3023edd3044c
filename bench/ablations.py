"""Training ablations at equal wall-clock time: one table of Rank-1 / mAP / mINP per variant.

    python bench/ablations.py --minutes 8 [--only transreid no-sie ...] [section.key=value ...]

Every variant is a real ``reidstream train`` run (Ray Train, DDP, the PK sampler, the shipped
configs in ``train/configs``) with the same time budget (``train.max_minutes``): the lr
schedule is stretched over the budget, so each run warms up, anneals fully and stops when its
time is spent, however fast its model steps. Each is then evaluated on the cuhk03-labeled test
split without re-ranking. Rows are printed as they finish and written to
``runs/ablations/<minutes>min/results.json``; a finished variant is not trained again when the
script is rerun (delete its entry in results.json and its folder to retrain it). A variant
that was interrupted or failed before its evaluation resumes from its last checkpoint, with the
time it had already spent counted (``--fresh`` starts it over).

The budget is equal time, not equal epochs: a cheaper model (no JPM, bag of tricks) sees more
images in it, which is the trade a user choosing a model on a fixed machine faces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "train" / "configs"

# name -> (config, overrides, what the row answers)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "transreid": ("transreid_hybrid_cpu", [], "TransReID hybrid, SIE + JPM (the shipped recipe)"),
    "no-sie": ("transreid_hybrid_cpu", ["model.sie=false"], "SIE off"),
    "no-jpm": ("transreid_hybrid_cpu", ["model.jpm=false"], "JPM off"),
    "pure-vit": ("transreid_tiny_cpu", [], "pure ViT (random init) instead of hybrid tokens"),
    "bot": ("bot_cpu", [], "bag-of-tricks MobileNetV2 baseline"),
    "dimn": (
        "dimn_cpu",
        ["train.datasets=[cuhk03-labeled]"],
        "DIMN on the same data (cuhk03-labeled only)",
    ),
}
NOMINAL_EPOCHS = 100  # never reached inside the budget; with warmup_epochs=5 warm-up is 5%


def run_variant(
    name: str, minutes: float, out_dir: Path, extra: list[str], resume: bool = False
) -> dict:
    from reidstream.config import load_config
    from reidstream.training.job import run_training

    config, overrides, _ = VARIANTS[name]
    cfg = load_config(
        CONFIGS / f"{config}.yaml",
        [
            *overrides,
            f"train.max_minutes={minutes}",
            f"train.epochs={NOMINAL_EPOCHS}",
            "train.warmup_epochs=5",
            "train.max_failures=0",
            "train.progress=false",
            "train.eval_dataset=cuhk03-labeled",
            f"train.storage_path={out_dir}",
            f"train.name={name}",
            *extra,
        ],
    )
    outcome = run_training(cfg, resume=resume)
    figures = outcome.metrics
    if "mAP" not in figures:
        raise RuntimeError(f"{name}: the run ended without an evaluation ({outcome.run_dir})")
    last = outcome.history[-1]
    images = sum(h.get("images_per_s", 0.0) * h.get("epoch_seconds", 0.0) for h in outcome.history)
    return {
        "variant": name,
        "what": VARIANTS[name][2],
        "config": f"train/configs/{config}.yaml {' '.join(overrides + extra)}".strip(),
        "rank1": figures["rank1"],
        "mAP": figures["mAP"],
        "mINP": figures["mINP"],
        "epochs": last["epoch"],
        "images_seen": int(images),
        "train_minutes": last["train_seconds"] / 60,
    }


def format_row(r: dict) -> str:
    return (
        f"| {r['variant']} | {r['what']} | {100 * r['rank1']:.1f} | {100 * r['mAP']:.1f} | "
        f"{100 * r['mINP']:.1f} | {r['images_seen']:,} | {r['train_minutes']:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per variant")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "ablations"))
    parser.add_argument("--address", default="", help="Ray cluster to join; '' starts one")
    parser.add_argument(
        "--fresh", action="store_true", help="start unfinished runs over instead of resuming them"
    )
    args = parser.parse_args(argv)

    from reidstream.training.job import ensure_ray

    out_dir = Path(args.out).resolve() / f"{args.minutes:g}min"
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    ensure_ray(args.address)
    for name in args.only:
        if name not in results:
            unfinished = out_dir / name
            resume = unfinished.exists() and not args.fresh
            if resume:  # interrupted or failed: its time budget and checkpoints carry on
                print(f"resuming the unfinished run {unfinished}", flush=True)
            elif unfinished.exists():
                print(f"removing the unfinished run {unfinished} (--fresh)", flush=True)
                shutil.rmtree(unfinished)
            results[name] = run_variant(name, args.minutes, out_dir, args.overrides, resume)
            results_file.write_text(json.dumps(results, indent=2))
        print(format_row(results[name]), flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.minutes:g} training minutes per variant; load avg {load:.1f}; "
        f"cuhk03-labeled test, no re-ranking"
    )
    print("| variant | what | Rank-1 % | mAP % | mINP % | images seen | train min |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        print(format_row(results[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
