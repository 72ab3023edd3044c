"""Speed check: run before changing a default that costs time (README, "Contributing").

    python bench/speed_check.py              # measure, print against the recorded figures
    python bench/speed_check.py --record     # after a deliberate change: record the new ones

Measures the three figures the pipeline's real-time claim rests on, with the defaults (plus
any ``section.key=value`` overrides): the detector's ms per frame (vtest.avi, batch 4), the
embedder's crops/s (real-sized crops, batch 32), and ``bench pipeline`` at 2 cameras (sustained
frames/s, frame latency p95). Each is printed beside the last recorded value, the CPU and the
date it was recorded on (``bench/speed_baseline.json``: one record per CPU model, so a
machine with AVX512-BF16 and one without each compare against their own). A figure more
than ``--tolerance`` worse on the same CPU model exits 1: a regression. A CPU without a record
is compared with the first one and only warned about: the 2026-11-22 row that did not
reproduce was an AMD EPYC figure read on an Intel Xeon.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "bench" / "speed_baseline.json"
# figure -> (unit, True when higher is better)
FIGURES = {
    "detector_ms_per_frame": ("ms", False),
    "embedder_crops_per_s": ("crops/s", True),
    "pipeline_2cam_fps": ("frames/s", True),
    "pipeline_2cam_p95_ms": ("ms", False),
}


def measure(overrides: list[str], seconds: float) -> dict[str, float | str]:
    import torch

    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.detection import PersonDetector
    from reidstream.detection.video import read_video_frames
    from reidstream.models import Embedder
    from reidstream.pipeline.bench import pipeline_run
    from reidstream.raycluster import ensure_ray

    cfg = load_config(overrides=overrides)
    torch.set_num_threads(cfg.pipeline.torch_threads)  # what one pipeline actor gets
    assets = Assets.from_config(cfg.assets)
    video = str(assets.asset("vtest.avi"))
    frames = read_video_frames(video, 48)
    detector = PersonDetector(cfg.detection, assets, cfg.inference)
    detector.detect(frames[:4])
    start = time.perf_counter()
    people = []
    for i in range(0, len(frames), 4):
        people += detector.detect(frames[i : i + 4])
    det_ms = (time.perf_counter() - start) / len(frames) * 1e3
    crops = [f[int(b[1]) : int(b[3]), int(b[0]) : int(b[2])]
             for f, d in zip(frames, people, strict=True) for b in d.boxes]
    crops = [c for c in crops if c.size][:64]
    embedder = Embedder.from_config(cfg, assets)
    embedder.embed(crops[:32], ["cam1"] * 32)
    start = time.perf_counter()
    embedder.embed(crops, ["cam1"] * len(crops))
    crops_per_s = len(crops) / (time.perf_counter() - start)
    del detector, embedder
    ensure_ray(cfg.pipeline.ray_address)
    # Cameras encoding in this process, as when the records were made (comparable figures).
    run = pipeline_run(copy.deepcopy(cfg), video, 2, 10.0, seconds, encode_ahead=False)
    return {
        "detector_ms_per_frame": round(det_ms, 1),
        "embedder_crops_per_s": round(crops_per_s, 1),
        "pipeline_2cam_fps": run["steady_fps"],
        "pipeline_2cam_p95_ms": run["frame_latency_ms"].get("p95", float("nan")),
        "backends": f"detection {run['backends'].get('detection')}, "
                    f"embed {run['backends'].get('embed')}",
        "stage_seconds": json.dumps(run["stage_seconds"]),
    }


def load_records() -> dict[str, dict]:
    """The recorded figures by CPU model (a file of one older record reads as one CPU's)."""
    if not BASELINE.is_file():
        return {}
    data = json.loads(BASELINE.read_text())
    return data["records"] if "records" in data else {data["cpu"]: data}


def main() -> int:
    from reidstream.device import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for reidstream")
    parser.add_argument("--record", action="store_true", help="write the figures as the baseline")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed loss (fraction)")
    parser.add_argument("--seconds", type=float, default=30.0, help="pipeline publishing time")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    now = measure(args.overrides, args.seconds)
    cpu = cpu_model()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    print(f"\nspeed check on {cpu} (load {load:.2f} at start), commit {commit}, "
          f"{now['backends']}, overrides {args.overrides or 'none'}")
    print(f"pipeline stage seconds: {now['stage_seconds']}")
    records = load_records()
    base = records.get(cpu) or next(iter(records.values()), None)
    if base:
        print(f"recorded {base['date']} on {base['cpu']} at {base['commit']} "
              f"({base.get('backends', '')}, overrides {base.get('overrides') or 'none'})")
        if base["cpu"] != cpu:
            print(f"no record for this CPU yet (recorded: {'; '.join(records)})")
    same_cpu = bool(base) and base["cpu"] == cpu and base.get("overrides") == args.overrides
    worse = []
    print(f"{'figure':24s} {'now':>10s} {'recorded':>10s} {'change':>8s}")
    for name, (unit, higher) in FIGURES.items():
        value = float(now[name])
        old = float(base["figures"][name]) if base else float("nan")
        change = (value - old) / old if base and old else float("nan")
        loss = -change if higher else change
        flag = ""
        if base and loss > args.tolerance:
            flag = "  WORSE" if same_cpu else "  worse (another CPU or settings: not comparable)"
            if same_cpu:
                worse.append(name)
        print(f"{name:24s} {value:10.1f} {old:10.1f} {change:+8.1%} {unit}{flag}")
    if args.record:
        records[cpu] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
            "commit": commit, "load": round(load, 2), "overrides": args.overrides,
            "backends": now["backends"],
            "figures": {k: now[k] for k in FIGURES}, "stage_seconds": now["stage_seconds"],
        }
        BASELINE.write_text(json.dumps({"records": records}, indent=2) + "\n")
        print(f"recorded in {BASELINE.relative_to(ROOT)}")
    elif worse:
        print(f"REGRESSION beyond {args.tolerance:.0%} on the recorded CPU: {', '.join(worse)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
