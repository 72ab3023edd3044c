"""Site calibration on recorded scenes: choose its rule, and see what each half of it earns.

    python bench/calibration_sweep.py --checkpoint CK --harvest A_HARVEST \
        --scene B_SCENE --journal B_JOURNAL --tracks B_TRACKS \
        [--quantiles 0.8 0.9] [--margins 0.1 0.2] [--parts]

The journal must come from a ``bench scene`` run of scene B with the same checkpoint and no
site calibration (``embed.site_calibration=false``, or a checkpoint without one), so its
embeddings are raw. The checkpoint is calibrated on harvest A (another scene of the same
cameras), B's recorded embeddings are centred with A's camera means, and B is re-linked with
A's thresholds and scored: what a site calibrated on A would have linked on B.

Default: a grid of rules (``calibration.impostor_quantile`` x ``calibration.margin_std``);
settings are chosen on the ``dev`` camera style only, the ``site1``..``site3`` styles are for
measuring them. ``--parts``: for the configured rule, what centring and the thresholds earn
alone and together (the linker's configured threshold and margin where a part is off).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reidstream.adaptation.calibration import calibrate_records, embed_harvest  # noqa: E402
from reidstream.config import load_config  # noqa: E402
from reidstream.pipeline.journal import read_journal, replay  # noqa: E402
from reidstream.scenes.score import collect, read_jsonl, score_scene  # noqa: E402
from reidstream.scenes.truth import SceneTruth  # noqa: E402


def centred(batches, calib):
    return [
        [
            dataclasses.replace(o, embedding=calib.centre_vectors(o.embedding[None], [o.camera])[0])
            for o in batch
        ]
        for batch in batches
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("checkpoint", "harvest", "scene", "journal", "tracks"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--parts", action="store_true", help="centring / thresholds ablation")
    args = parser.parse_args()
    cfg = load_config()
    vectors, records, cameras, cannot = embed_harvest(args.checkpoint, args.harvest, cfg)
    truth = SceneTruth.load(args.scene)
    batches = read_journal(args.journal)
    summaries = read_jsonl(args.tracks)

    def score(journal, calibration) -> dict:
        out = replay(journal, cfg.linker, cfg.gallery, calibration)
        links = score_scene(truth, collect(out.events, out.relabel(summaries))).links
        return {k: round(getattr(links, k), 3) for k in ("precision", "recall", "f1")}

    if args.parts:
        calib = calibrate_records(vectors, records, cameras, cannot, cfg.calibration)
        rows = {
            "as shipped (no centring, configured threshold)": score(batches, None),
            "centring only": score(centred(batches, calib), None),
            # thresholds measured on the raw (uncentred) cannot-link similarities
            "thresholds only": score(batches, calibrate_records(
                vectors, records, cameras, cannot,
                dataclasses.replace(cfg.calibration, camera_centre=False),
            )),
            "centring + thresholds (site calibration)": score(centred(batches, calib), calib),
        }
        for name, row in rows.items():
            print(json.dumps({"variant": name, **row}), flush=True)
        return
    for q in args.quantiles:
        for m in args.margins:
            rule = dataclasses.replace(cfg.calibration, impostor_quantile=q, margin_std=m)
            calib = calibrate_records(vectors, records, cameras, cannot, rule)
            print(json.dumps({"quantile": q, "margin_std": m, "threshold": calib.pooled.threshold,
                              "margin": calib.pooled.margin,
                              **score(centred(batches, calib), calib)}), flush=True)


if __name__ == "__main__":
    main()
