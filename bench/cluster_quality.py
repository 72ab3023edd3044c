"""How good SpCL's pseudo-labels would be on a labelled split, and why: the clustering
settings and the cameras, scored against the identities the training never reads.

    python bench/cluster_quality.py [--checkpoint model.pt] [--dataset cuhk03-detected] \
        [--setting k1=30,k2=6,eps=0.6,min_samples=4 ...] [config overrides]

Embeds the split's training images with a checkpoint (or, without one, the model of
``--config``: for ``spcl_usl_cpu.yaml`` the ImageNet start of a fully unsupervised run),
then prints

- nearest neighbours (features centred per camera, as the clustering sees them): how often
  an image's nearest other image is the same person, among all images, among the other
  camera's, among its own camera's; and how far apart the cameras' mean features are;
- for each clustering setting (default: the config's ``spcl`` section): clusters, images
  clustered, pair precision and recall against the true identities, and the cross-camera
  pairs the clusters hold and how many of them are right.

``--colour`` also scores a hand-made feature that needs no training at all (clothing colour:
RGB histograms of six horizontal stripes, :mod:`reidstream.adaptation.colour`) and its even
mix with the model's (``spcl.colour_weight=0.5``), as neighbours and as clusters.

Use it to choose ``spcl.k1`` / ``eps`` / ``min_samples`` on a labelled development set before
adapting to one without labels (BENCHMARKS.md, "Fully unsupervised SpCL").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("YOLO_OFFLINE", "1")

from reidstream.adaptation.cluster import (  # noqa: E402
    ClusterParams,
    centre_per_camera,
    mix_features,
    pair_scores,
    pseudo_labels,
)
from reidstream.adaptation.colour import colour_histograms  # noqa: E402
from reidstream.adaptation.spcl import cluster_params  # noqa: E402


def embed_split(args: argparse.Namespace):
    """(features [N, D], person ids, camera ids) of the split's training images."""
    import torch

    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.data.market import load_dataset
    from reidstream.models.base import build_model
    from reidstream.models.checkpoint import load_checkpoint
    from reidstream.training.context import Rank
    from reidstream.training.features import embed_records

    cfg = load_config(args.config, args.overrides)
    assets = Assets.from_config(cfg.assets)
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint)
        model = loaded.model
        cfg = dataclasses.replace(cfg, model=loaded.model_cfg)
    else:
        model = build_model(cfg.model, assets)
    records = list(load_dataset(args.dataset, assets, cfg.data).train)
    torch.set_num_threads(args.threads)
    feats = embed_records(model, records, np.arange(len(records)), cfg,
                          Rank(0, 1, torch.device("cpu")))
    pids = np.array([r.pid for r in records])
    cams = np.array([r.camid for r in records])
    return feats.numpy(), pids, cams, cfg, records


def neighbour_rates(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> dict[str, float]:
    """Share of images whose nearest neighbour (any / other camera / same camera) is the same
    person."""
    feats = centre_per_camera(feats, cams)
    out = {}
    for name, allowed in (("any", None), ("other camera", False), ("same camera", True)):
        nearest = np.empty(len(feats), dtype=np.int64)
        for start in range(0, len(feats), 1024):
            sims = feats[start:start + 1024] @ feats.T
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
            if allowed is not None:
                same = cams[start:start + 1024, None] == cams[None]
                sims[same != allowed] = -np.inf
            nearest[start:start + len(sims)] = sims.argmax(1)
        out[name] = float((pids[nearest] == pids).mean())
    return out


def camera_gap(feats: np.ndarray, cams: np.ndarray) -> float:
    """Mean distance between the cameras' mean features: how far training pushes the cameras
    apart (0 for a camera-blind embedding)."""
    means = np.stack([feats[cams == c].mean(axis=0) for c in np.unique(cams)])
    dists = np.linalg.norm(means[:, None] - means[None], axis=2)
    return float(dists[np.triu_indices(len(means), 1)].mean()) if len(means) > 1 else 0.0


def parse_setting(text: str, base: ClusterParams) -> ClusterParams:
    fields = {f.name: f.type for f in dataclasses.fields(ClusterParams)}
    values = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--setting: unknown key {key!r}; known: {sorted(fields)}")
        values[key] = (value.lower() in ("1", "true", "yes")) if fields[key] in (bool, "bool") \
            else type(getattr(base, key))(value)
    return dataclasses.replace(base, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="a reidstream checkpoint (default: the "
                        "config's model as it starts)")
    parser.add_argument("--config", default="train/configs/spcl_usl_cpu.yaml")
    parser.add_argument("--dataset", default="cuhk03-detected", help="its train split is scored")
    parser.add_argument("--setting", action="append", default=[],
                        help="clustering settings to score, e.g. k1=10,k2=3,eps=0.5 (repeatable; "
                        "keys of ClusterParams, the rest from the config's spcl section)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--colour", action="store_true", help="also score stripe colour "
                        "histograms and their even mix with the model's features")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.img_height=128")
    args = parser.parse_args()

    started = time.perf_counter()
    feats, pids, cams, cfg, records = embed_split(args)
    print(f"{args.dataset} train: {len(feats)} images of {len(np.unique(pids))} people, "
          f"{len(np.unique(cams))} cameras; embedded with "
          f"{args.checkpoint or args.config + ' (its start)'} in "
          f"{time.perf_counter() - started:.0f} s")
    rates = neighbour_rates(feats, pids, cams)
    print("nearest neighbour is the same person: " + ", ".join(
        f"{name} {rate:.3f}" for name, rate in rates.items())
        + f"; distance between the cameras' mean features {camera_gap(feats, cams):.3f}")
    spaces = {"model": feats}
    if args.colour:
        from reidstream.data.transforms import load_record_image

        colour = colour_histograms(load_record_image(r) for r in records)
        spaces["even mix"] = mix_features(feats, colour, cams, 0.5)
        for name, x in (("colour histograms", colour), ("even mix", spaces["even mix"])):
            print(f"{name}: nearest neighbour is the same person: " + ", ".join(
                f"{k} {v:.3f}" for k, v in neighbour_rates(x, pids, cams).items()))
    base = cluster_params(cfg.spcl)
    settings = [parse_setting(s, base) for s in args.setting] or [base]
    print("| features | k1 | k2 | eps | min_samples | clusters | images clustered | "
          "pair precision | pair recall | cross-camera pairs (right) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for params in settings:
        for name, x in spaces.items():
            result = pseudo_labels(x, params, cameras=cams)
            s = pair_scores(result.labels, result.clustered, pids, cams)
            print(f"| {name} | {params.k1} | {params.k2} | {params.eps} | {params.min_samples} | "
                  f"{result.num_clusters} | {int(result.clustered.sum())} | "
                  f"{s['precision']:.3f} | {s['recall']:.3f} | "
                  f"{s['cross_pairs']} ({s['cross_right']}) |", flush=True)


if __name__ == "__main__":
    main()
