"""Choose the site-calibration rule (impostor quantile, margin) on development scenes.

    python bench/calibration_sweep.py --checkpoint CK --harvest A_HARVEST \
        --scene B_SCENE --journal B_JOURNAL --tracks B_TRACKS \
        [--quantiles 0.8 0.9 0.95 0.99] [--margins 0.1 0.2 0.5]

The journal must come from a ``bench scene`` run of scene B with the same checkpoint and no
site calibration (``embed.site_calibration=false``), so its embeddings are raw. For each rule
the checkpoint is calibrated on harvest A (another scene of the same cameras), B's recorded
embeddings are centred with A's camera means, and B is re-linked with A's thresholds and
scored: what a site calibrated on A would have linked on B. Settings are chosen on the ``dev``
camera style only; the ``site1``..``site3`` styles are for measuring them.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("checkpoint", "harvest", "scene", "journal", "tracks"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.99])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    args = parser.parse_args()
    cfg = load_config()
    vectors, records, cameras, cannot = embed_harvest(args.checkpoint, args.harvest, cfg)
    truth = SceneTruth.load(args.scene)
    batches = read_journal(args.journal)
    summaries = read_jsonl(args.tracks)
    rows = []
    for q in args.quantiles:
        for m in args.margins:
            calib_cfg = dataclasses.replace(cfg.calibration, impostor_quantile=q, margin_std=m)
            calib = calibrate_records(vectors, records, cameras, cannot, calib_cfg)
            centred = [
                [
                    dataclasses.replace(
                        o, embedding=calib.centre_vectors(o.embedding[None], [o.camera])[0]
                    )
                    for o in batch
                ]
                for batch in batches
            ]
            out = replay(centred, cfg.linker, cfg.gallery, calib)
            score = score_scene(truth, collect(out.events, out.relabel(summaries)))
            links = score.links
            rows.append({"quantile": q, "margin_std": m, "threshold": calib.pooled.threshold,
                         "margin": calib.pooled.margin, "precision": round(links.precision, 3),
                         "recall": round(links.recall, 3), "f1": round(links.f1, 3)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
