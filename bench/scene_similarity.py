"""What a scene's track embeddings look like to the linker: genuine vs impostor similarities.

    python bench/scene_similarity.py --scene DIR --journal J --tracks T [--min-track-ms 800]

Reads a ``bench scene`` run's journal (the last embedding of every track) and its track
summaries, finds each track's truth person, and prints for cross-camera pairs of tracks of at
least ``--min-track-ms``: how often a track's nearest other-camera track is its own person
(the linker's ceiling), and the similarity of genuine pairs (same person) against impostors
(different people), with the impostors' quantiles. Same-camera pairs that overlap in time
(the free cannot-links a site gives) are printed too: they are impostors the pipeline sees
without labels, so their quantiles are what site calibration can use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reidstream.pipeline.journal import read_journal  # noqa: E402
from reidstream.scenes.score import (  # noqa: E402
    assign_identities,
    camera_offsets,
    collect,
    read_jsonl,
)
from reidstream.scenes.truth import SceneTruth  # noqa: E402


def analyse(scene: str, journal: str, tracks: str, min_track_ms: int) -> dict:
    truth = SceneTruth.load(scene)
    last = {}
    for batch in read_journal(journal):
        for obs in batch:
            last[obs.key] = obs
    inputs = collect([], read_jsonl(tracks))
    offsets = camera_offsets(truth, inputs, 0, True)
    ids = assign_identities(truth, inputs, offsets, 0.5)
    keys = [
        k for k, o in last.items()
        if o.end_ms - o.start_ms >= min_track_ms and ids.get(k) and ids[k].pid is not None
    ]
    emb = np.stack([last[k].embedding / np.linalg.norm(last[k].embedding) for k in keys])
    pid = np.array([ids[k].pid for k in keys])
    cam = np.array([k[0] for k in keys])
    start = np.array([last[k].start_ms for k in keys])
    end = np.array([last[k].end_ms for k in keys])
    sims = emb @ emb.T
    cross = cam[:, None] != cam[None, :]
    same_pid = pid[:, None] == pid[None, :]
    overlap = (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None])
    upper = np.triu(np.ones_like(sims, dtype=bool), 1)
    genuine = sims[cross & same_pid & upper]
    impostor = sims[cross & ~same_pid & upper]
    cannot = sims[~cross & overlap & upper]
    cannot_true = sims[~cross & overlap & upper & ~same_pid]
    # Nearest other-camera track is the same person, for tracks whose person has one.
    hits = total = 0
    for i in range(len(keys)):
        others = np.nonzero(cross[i])[0]
        if not len(others) or not same_pid[i, others].any():
            continue
        total += 1
        hits += int(same_pid[i, others[np.argmax(sims[i, others])]])

    def q(values: np.ndarray) -> dict:
        if not len(values):
            return {}
        pct = np.percentile(values, [50, 90, 95, 99])
        return {
            "n": int(len(values)), "mean": round(float(values.mean()), 3),
            "std": round(float(values.std()), 3),
            "p50_p90_p95_p99": [round(float(v), 3) for v in pct],
        }

    return {
        "scene": scene,
        "tracks": len(keys),
        "nearest_other_camera_is_own_person": [hits, total],
        "genuine": q(genuine),
        "impostor": q(impostor),
        "cannot_link": q(cannot),
        "cannot_link_truly_different": q(cannot_true),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--tracks", required=True)
    parser.add_argument("--min-track-ms", type=int, default=800)
    args = parser.parse_args()
    print(json.dumps(analyse(args.scene, args.journal, args.tracks, args.min_track_ms), indent=2))


if __name__ == "__main__":
    main()
