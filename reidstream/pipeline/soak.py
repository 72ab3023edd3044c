"""``reidstream bench soak``: more cameras than the machine can process, for a bounded time.

A fresh broker and pipeline; ``--cameras`` views of the bundled video published at ``--fps``
for ``--seconds``. Every ``SAMPLE_S`` it samples each pipeline process's resident memory
(the driver and every Ray actor, by kind), the consumer lag and the events so far. Reported:
peak RSS per kind, its growth from the first sample after warm-up to the last (flat memory
means a bounded pipeline), events/s, the largest lag, and actor restarts. Nothing may crash:
a pipeline run that raises fails the bench.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

SAMPLE_S = 10.0
WARMUP_SAMPLES = 3  # memory growth counts from this sample on (models loaded, buffers full)


def _rss_by_kind() -> dict[str, int]:
    """Resident bytes of this driver and of each Ray actor process, summed per actor class."""
    import psutil

    out: dict[str, int] = defaultdict(int)
    out["driver"] = psutil.Process(os.getpid()).memory_info().rss
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if cmd.startswith("ray::") and proc.info.get("memory_info") is not None:
            kind = cmd.split()[0][5:].split(".")[0]
            if kind and kind != "IDLE":
                out[kind] += proc.info["memory_info"].rss
    return dict(out)


def soak_run(cfg: Any, video: str, cameras: int, fps: float, seconds: float) -> dict[str, Any]:
    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.publisher import publish
    from reidstream.pipeline.bench import camera_views
    from reidstream.pipeline.metrics import ConsumerLag
    from reidstream.pipeline.runner import Pipeline

    views = camera_views(cameras)
    cfg.kafka.group_id = f"reidstream-soak-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.run_seconds = seconds
    cfg.pipeline.idle_stop_seconds = 0
    samples: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        cfg.kafka = broker.client_config(cfg.kafka)
        pipeline = Pipeline(cfg).start()
        stop = threading.Event()
        lag = ConsumerLag(cfg.kafka)

        def publisher() -> None:
            publish(cfg.kafka, video, views, fps, max_frames=int(seconds * fps), loop=True,
                    stop=stop)

        def sampler() -> None:
            started = time.monotonic()
            while not stop.wait(SAMPLE_S):
                samples.append({"t": round(time.monotonic() - started, 1),
                                "rss": _rss_by_kind(), "lag": sum(lag().values()),
                                "events": pipeline.stats.events,
                                "frames": pipeline.stats.frames})

        threads = [threading.Thread(target=f, daemon=True) for f in (publisher, sampler)]
        for t in threads:
            t.start()
        started = time.monotonic()
        try:
            stats = pipeline.run()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
            pipeline.shutdown()
            lag.close()
        wall = time.monotonic() - started
    kinds = sorted({k for s in samples for k in s["rss"]})
    steady = samples[WARMUP_SAMPLES:] or samples
    mb = 1 << 20
    memory = {
        k: {"peak_mb": round(max(s["rss"].get(k, 0) for s in samples) / mb, 1),
            "first_mb": round(steady[0]["rss"].get(k, 0) / mb, 1),
            "last_mb": round(steady[-1]["rss"].get(k, 0) / mb, 1)}
        for k in kinds
    } if samples else {}
    return {
        "cameras": cameras,
        "offered_fps": cameras * fps,
        "seconds": seconds,
        "frames": stats.frames,
        "frames_per_s": round(stats.frames / wall, 2),
        "events": stats.events,
        "events_per_s": round(stats.events / wall, 3),
        "max_lag_frames": max((s["lag"] for s in samples), default=0),
        "last_lag_frames": samples[-1]["lag"] if samples else 0,
        "restarts": dict(stats.restarts),
        "memory": memory,
        "samples": samples,
    }


def print_soak(r: dict[str, Any]) -> None:
    print(f"soak: {r['cameras']} cameras offered {r['offered_fps']:g} frames/s for "
          f"{r['seconds']:g} s: processed {r['frames_per_s']} frames/s, {r['events_per_s']} "
          f"events/s, lag max {r['max_lag_frames']} (last {r['last_lag_frames']}) frames, "
          f"restarts {r['restarts'] or 'none'}")
    for kind, m in r["memory"].items():
        print(f"  {kind:24s} peak {m['peak_mb']:8.1f} MB   after warm-up {m['first_mb']:8.1f} "
              f"-> {m['last_mb']:8.1f} MB")
