"""``reidstream harvest stats DIR``: what a harvest folder holds."""

from __future__ import annotations

import argparse
import json


def add_arguments_run_harvest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["stats"], help="stats: summarise a harvest folder")
    parser.add_argument("folder", help="the harvest folder (harvest.dir of a pipeline run)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_harvest(args: argparse.Namespace) -> int:
    from reidstream.adaptation.harvest import harvest_stats

    stats = harvest_stats(args.folder)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    span = ""
    if stats["first_ts_ms"] is not None:
        span = f", {(stats['last_ts_ms'] - stats['first_ts_ms']) / 1000.0:.1f} s of capture time"
    print(f"harvest {stats['folder']}: {stats['crops']} crops of {stats['tracks']} tracks "
          f"({stats['crops_per_track']} per track){span}")
    print(f"  {stats['shards']} shard(s), {stats['bytes'] / 1e6:.1f} MB; model version(s): "
          f"{', '.join(stats['model_versions'])}")
    print(f"  crop quality p10 / p50 / p90: {stats['quality_p10_p50_p90']}")
    print(f"  {'camera':<16} {'tracks':>7} {'crops':>7}")
    for camera, row in sorted(stats["cameras"].items()):
        print(f"  {camera:<16} {row['tracks']:>7} {row['crops']:>7}")
    return 0


def add_arguments_run_calibrate(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    parser.add_argument("checkpoint", help="checkpoint to calibrate (a path or a shipped name)")
    parser.add_argument("--harvest", required=True, help="harvest folder of the site")
    parser.add_argument("--out", required=True, help="where to write the calibrated checkpoint")
    add_config_arguments(parser)


def run_calibrate(args: argparse.Namespace) -> int:
    """Derive a site calibration for a checkpoint from a harvest and write a copy with it."""
    from reidstream.adaptation.calibration import calibrate_harvest
    from reidstream.cli import load_cli_config

    cfg = load_cli_config(args)
    calib, out = calibrate_harvest(args.checkpoint, args.harvest, args.out, cfg)
    print(calib.describe())
    print(f"calibrated checkpoint: {out}")
    return 0


def add_arguments_run_blend(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    parser.add_argument("checkpoint", help="the fine-tuned (e.g. site-adapted) checkpoint")
    parser.add_argument("--start", required=True,
                        help="the checkpoint it was fine-tuned from (a path or a shipped name)")
    parser.add_argument("--weight", type=float, required=True,
                        help="the start's weight in the blend, 0..1 (0: the fine-tune as it is)")
    parser.add_argument("--harvest", default="",
                        help="harvest folder of the site: re-calibrate the blend on it (required "
                             "when the checkpoint carries a site calibration)")
    parser.add_argument("--out", required=True, help="where to write the blended checkpoint")
    add_config_arguments(parser)


def run_blend(args: argparse.Namespace) -> int:
    """Blend a fine-tune with its start (what ``train.blend_init`` does at the end of a run)
    and re-calibrate it: a blend moves the similarity scale, so the old calibration is wrong."""
    from pathlib import Path

    from reidstream.adaptation.calibration import META_KEY, calibrate_harvest, checkpoint_path
    from reidstream.cli import load_cli_config
    from reidstream.models import load_checkpoint, save_checkpoint
    from reidstream.models.transfer import blend_weights, start_weights

    if not 0.0 <= args.weight <= 1.0:  # before minutes of loading, not after
        raise SystemExit(f"--weight is the start's share of the blend, 0..1; got {args.weight}")
    if args.harvest and not Path(args.harvest).is_dir():
        raise SystemExit(f"--harvest {args.harvest}: no such folder")
    cfg = load_cli_config(args)
    path = checkpoint_path(args.checkpoint, cfg)
    tuned = load_checkpoint(path)
    if META_KEY in tuned.meta and not args.harvest:
        raise SystemExit(f"{path} carries a site calibration, which the blend would leave "
                         "wrong: pass --harvest DIR to re-calibrate it")
    start_path = checkpoint_path(args.start, cfg)
    start = start_weights(tuned.model, load_checkpoint(start_path), tuned.cameras.names)
    blend_weights(tuned.model, start, args.weight)
    meta = {k: v for k, v in tuned.meta.items() if k != META_KEY}
    meta["blend"] = {"start": str(start_path), "start_weight": float(args.weight)}
    out = save_checkpoint(args.out, tuned.model, tuned.cameras, meta, half=tuned.stored_half)
    print(f"blended {path} with {args.weight:.2f} of {start_path}: {out}")
    if args.harvest:
        calib, out = calibrate_harvest(str(out), args.harvest, str(out), cfg)
        print(calib.describe())
        print(f"re-calibrated on {Path(args.harvest)}: {out}")
    return 0
