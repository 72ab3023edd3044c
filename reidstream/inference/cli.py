"""``reidstream export``: the detector and the embedder as ONNX, checked in every runtime here.

    reidstream export [--out DIR] [--check] [embed.checkpoint=...] [detection.model=...]

Writes into ``inference.cache_dir`` (where ``detection.backend`` / ``embed.backend`` look
first) unless ``--out`` names another folder; with ``--check`` it runs each export through
every installed runtime on real frames and crops and prints speed and agreement with PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def add_arguments_run_export(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    parser.add_argument("--out", default="", help="folder for the ONNX files "
                        "(default inference.cache_dir, where the backends look)")
    parser.add_argument("--check", action="store_true",
                        help="time every installed runtime and compare it with PyTorch")
    parser.add_argument("--frames", type=int, default=8, help="frames of vtest.avi for --check")
    add_config_arguments(parser)


def run_export(args: argparse.Namespace) -> int:
    from reidstream.assets import Assets
    from reidstream.cli import load_cli_config
    from reidstream.detection import PersonDetector
    from reidstream.inference.backends import resolve_precision
    from reidstream.inference.export import cache_dir, export_detector, export_embedder
    from reidstream.models import Embedder

    cfg = load_cli_config(args)
    if args.out:
        cfg.inference.cache_dir = args.out
    out = cache_dir(cfg.inference.cache_dir)
    assets = Assets.from_config(cfg.assets)
    detector = export_detector(assets.asset(cfg.detection.model), out, force=True,
                               head=cfg.detection.head)
    print(f"detector: {detector} (head: {cfg.detection.head})")
    if resolve_precision(cfg.detection.precision, "cpu") == "int8":  # its int8 twin, calibrated
        det = PersonDetector(dataclasses.replace(cfg.detection, device="cpu",
                                                 backend="onnxruntime"), assets, cfg.inference)
        print(f"detector int8: {det.exported.session.path}")
    cfg.embed.backend = "torch"
    embedder = Embedder.from_config(cfg, assets)
    model = embedder.model
    path = export_embedder(model, out, name=model.cfg.name, force=True)
    print(f"embedder: {path} (camera side information as input 'camera_ids'; "
          f"cameras {embedder.cameras.names or 'none'})")
    if cfg.embed.precision in ("int8", "auto"):  # its int8 twin (auto may pick it)
        from reidstream.inference.quantize import quantize_embedder

        print(f"embedder int8: {quantize_embedder(path, force=True)}")
    if args.check:
        check(cfg, assets, args.frames)
    return 0


def check(cfg, assets, n_frames: int) -> None:
    """Per runtime: ms per frame / crop, and agreement with PyTorch on the same inputs."""
    import numpy as np
    import torch

    from reidstream.detection import PersonDetector
    from reidstream.detection.boxes import box_iou
    from reidstream.detection.video import read_video_frames
    from reidstream.inference.backends import installed_backends
    from reidstream.models import Embedder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    frames = read_video_frames(str(assets.asset("vtest.avi")), n_frames, step=5)
    backends = installed_backends(device)
    reference, crops = None, None
    print(f"{'model':9s} {'backend':12s} {'ms/item':>8s} {'agreement with torch':>30s}")
    for backend in reversed(backends):  # torch first: the reference
        det = PersonDetector(dataclasses.replace(cfg.detection, backend=backend), assets,
                             cfg.inference)
        start = time.perf_counter()
        found = [det.detect([f])[0] for f in frames]
        ms = (time.perf_counter() - start) / len(frames) * 1e3
        if reference is None:
            reference = found
            crops = [f[int(b[1]):int(b[3]), int(b[0]):int(b[2])]
                     for f, d in zip(frames, found, strict=True) for b in d.boxes]
            agree = "reference"
        else:
            counts = sum(len(a) != len(b) for a, b in zip(reference, found, strict=True))
            ious = [box_iou(a.boxes, b.boxes).max(1).min() for a, b in
                    zip(reference, found, strict=True) if len(a) and len(a) == len(b)]
            agree = f"min box IoU {min(ious, default=float('nan')):.4f}, {counts} frame(s) differ"
        label = f"{det.backend} {det.precision}"
        print(f"{'detector':9s} {label:12s} {ms:8.1f} {agree:>30s}", flush=True)
    crops = [c for c in crops if c.size][:32] or [frames[0][:128, :64]]
    base = None
    # Every runtime in f32 (torch first: the reference), then ONNX Runtime's int8 graph.
    runs = [(b, "f32") for b in reversed(backends)]
    runs += [("onnxruntime", "int8")] if device == "cpu" and "onnxruntime" in backends else []
    for backend, precision in runs:
        emb = Embedder.from_config(dataclasses.replace(cfg, embed=dataclasses.replace(
            cfg.embed, backend=backend, precision=precision)), assets)
        emb.embed(crops[:2])
        start = time.perf_counter()
        vectors = emb.embed(crops)
        ms = (time.perf_counter() - start) / len(crops) * 1e3
        if base is None:
            base, agree = vectors, "reference"
        else:
            agree = f"min cosine {float(np.min(np.sum(base * vectors, axis=1))):.5f}"
        label = backend if emb.session is None else f"{backend} {emb.session.precision}"
        print(f"{'embedder':9s} {label:12s} {ms:8.1f} {agree:>30s}", flush=True)
