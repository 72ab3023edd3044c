"""How long SpCL's clustering takes at a site's scale, and whether it finds the people.

    python bench/cluster_scale.py [--crops 100000] [--per-person 5] [--dim 960]

Synthetic embeddings stand in for a big harvest: ``crops / per-person`` people, each a random
unit direction, their crops that direction plus noise, split over two cameras that each add
their own offset (what a site's cameras do). Timed: :func:`reidstream.adaptation.cluster.
pseudo_labels` end to end (camera centring, FAISS k-nearest neighbours, k-reciprocal Jaccard
on those pairs only, DBSCAN three times for the reliability criterion). Printed: seconds,
clusters, and the pairwise precision / recall of "same cluster" against "same person".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reidstream.adaptation.cluster import ClusterParams, pair_scores, pseudo_labels  # noqa: E402


def synthetic(crops: int, per_person: int, dim: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    people = crops // per_person
    centres = rng.normal(size=(people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    pid = np.repeat(np.arange(people), per_person)
    cam = rng.integers(0, 2, size=len(pid))
    offsets = 0.5 * rng.normal(size=(2, dim)).astype(np.float32) / np.sqrt(dim) * 10
    feats = centres[pid] + noise * rng.normal(size=(len(pid), dim)).astype(np.float32) / np.sqrt(
        dim
    ) + offsets[cam]
    return feats, pid, cam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=100_000)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--dim", type=int, default=960)
    parser.add_argument("--noise", type=float, default=0.8)
    args = parser.parse_args()
    feats, pid, cam = synthetic(args.crops, args.per_person, args.dim, args.noise)
    started = time.perf_counter()
    result = pseudo_labels(feats, ClusterParams(), cameras=cam)
    seconds = time.perf_counter() - started
    scores = pair_scores(result.labels, result.clustered, pid)
    precision, recall = scores["precision"], scores["recall"]
    print(f"{args.crops} crops of {args.crops // args.per_person} people, {args.dim}-d: "
          f"clustered in {seconds:.1f} s; {result.num_clusters} clusters, "
          f"{int(result.clustered.sum())} crops clustered; pair precision {precision:.3f}, "
          f"recall {recall:.3f}")


if __name__ == "__main__":
    main()
