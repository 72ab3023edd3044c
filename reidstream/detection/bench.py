"""Detector speed and recall by image size, on the bundled pedestrian video.

vtest.avi has no ground truth, so recall is measured against a pseudo ground truth: confident
boxes (score >= --ref-conf) from the same weights at a large image size (--ref-imgsz). A box
counts as found when a detection at or above --match-conf overlaps it with IoU >= 0.5.

    python -m reidstream.detection.bench --threads 2 --imgsz 320 416 640 --batch 1 4 \
        [--backends torch onnxruntime openvino]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from collections.abc import Sequence

import numpy as np

from reidstream.detection.boxes import box_iou, greedy_matches
from reidstream.detection.video import read_video_frames


def _detect_in_chunks(det, frames: Sequence[np.ndarray], size: int) -> list:
    out = []
    for i in range(0, len(frames), size):
        out.extend(det.detect(frames[i : i + size]))
    return out


def main(argv: list[str] | None = None) -> int:
    import os

    from reidstream.detection.detector import offline_ultralytics

    offline_ultralytics()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.detection.detector import PersonDetector
    from reidstream.device import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 416, 640])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--frames", type=int, default=48, help="frames timed per setting")
    p.add_argument("--recall-frames", type=int, default=40, help="frames (every 15th) for recall")
    p.add_argument("--ref-imgsz", type=int, default=1280)
    p.add_argument("--ref-conf", type=float, default=0.5)
    p.add_argument("--match-conf", type=float, default=0.25)
    p.add_argument("--video", default="vtest.avi")
    p.add_argument("--backends", nargs="+", default=["torch"],
                   help="detection.backend values to time (auto: the one auto would pick)")
    p.add_argument("--precision", default="", help="detection.precision for exported backends "
                   "(f32 | bf16; default: the config's)")
    p.add_argument("--head", default="", help="detection.head (person | coco; default: the "
                   "config's)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config()
    assets = Assets.from_config(cfg.assets)
    video = str(assets.asset(args.video))
    timing = read_video_frames(video, args.frames)
    sample = read_video_frames(video, args.recall_frames, step=15)

    base = dataclasses.replace(cfg.detection, backend="torch",
                               precision=args.precision or cfg.detection.precision,
                               head=args.head or cfg.detection.head)
    ref_det = PersonDetector(dataclasses.replace(base, imgsz=args.ref_imgsz), assets)
    ref = [d.select(d.scores >= args.ref_conf) for d in _detect_in_chunks(ref_det, sample, 4)]
    n_ref = sum(len(d) for d in ref)
    crop_height = cfg.tracking.min_crop_height
    n_tall = sum(int((d.heights >= crop_height).sum()) for d in ref)
    del ref_det

    print(
        f"# {platform.node()}: {cpu_model()}, threads {args.threads}, detection.head "
        f"{base.head}, {video}: {timing[0].shape[1]}x{timing[0].shape[0]}"
    )
    print(
        f"# recall vs imgsz {args.ref_imgsz} boxes (score >= {args.ref_conf}, {n_ref} boxes in "
        f"{len(sample)} frames, {n_tall} of them >= {crop_height} px tall), detections scored "
        f">= {args.match_conf}, IoU >= 0.5"
    )
    print(
        "| backend | imgsz | batch | ms/frame (median) | ms/frame (p90) | recall "
        f"| recall >= {crop_height} px | detections/frame |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, imgsz in [(b, i) for b in args.backends for i in args.imgsz]:
        det = PersonDetector(dataclasses.replace(base, imgsz=imgsz, backend=backend), assets,
                             cfg.inference)
        found = found_tall = kept = 0
        for d, r in zip(_detect_in_chunks(det, sample, 4), ref, strict=True):
            d = d.select(d.scores >= args.match_conf)
            kept += len(d)
            found += greedy_matches(box_iou(r.boxes, d.boxes), 0.5)
            tall = r.select(r.heights >= crop_height)
            found_tall += greedy_matches(box_iou(tall.boxes, d.boxes), 0.5)
        recall = found / max(n_ref, 1)
        recall_tall = found_tall / max(n_tall, 1)
        for bs in args.batch:
            per_frame = []
            det.detect(timing[:bs])  # settle shapes for this batch size
            for i in range(0, len(timing) - bs + 1, bs):
                t0 = time.perf_counter()
                det.detect(timing[i : i + bs])
                per_frame.append((time.perf_counter() - t0) * 1000 / bs)
            med = statistics.median(per_frame)
            p90 = float(np.percentile(per_frame, 90))
            print(
                f"| {det.backend} {det.precision} | {imgsz} | {bs} | {med:.1f} | {p90:.1f} "
                f"| {recall:.3f} | {recall_tall:.3f} | {kept / len(sample):.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
