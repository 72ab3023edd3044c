"""Replaying a rendered scene into the frames topic, every camera on the scene's own clock.

Frame i of every camera is the same instant, so the cameras are played together (one frame of
each in turn), stamped with the manifest's capture times and indices: transit times between
cameras stay what the scene says, whatever the publishing speed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from reidstream.config import KafkaConfig
from reidstream.scenes.truth import load_manifest

log = logging.getLogger(__name__)


def publish_scene(kafka: KafkaConfig, scene: str | Path, fps: float = 0.0) -> int:
    """Publish every camera video of ``scene``; returns the records the broker acknowledged.

    ``fps`` 0 publishes as fast as the broker takes it (the pipeline then works through the
    backlog at its own speed); otherwise frames are paced at ``fps`` per camera.
    """
    import cv2

    from reidstream.ingest.producer import OutRecord, SafeProducer
    from reidstream.ingest.wire import encode_frame, jpeg_encode

    manifest, folder = load_manifest(scene)
    captures = {c.camera: cv2.VideoCapture(str(folder / c.video)) for c in manifest.cameras}
    for camera, cap in captures.items():
        if not cap.isOpened():
            raise FileNotFoundError(f"scene {folder}: cannot open the video of camera {camera}")
    acknowledged = 0
    period = 1.0 / fps if fps > 0 else 0.0
    with SafeProducer(kafka, name=f"scene {folder.name}") as producer:
        batch: list[OutRecord] = []
        for index in range(max(c.num_frames for c in manifest.cameras)):
            started = time.monotonic()
            for cam in manifest.cameras:
                ok, image = captures[cam.camera].read() if index < cam.num_frames else (False, None)
                if not ok:
                    continue
                key, value, headers = encode_frame(
                    cam.camera, jpeg_encode(image, kafka.jpeg_quality), cam.ts_ms[index], index
                )
                batch.append(OutRecord(kafka.frames_topic, key, value, headers, cam.ts_ms[index]))
            if len(batch) >= 64 or period:
                acknowledged += _deliver(producer, batch)
                batch = []
            if period:
                time.sleep(max(0.0, period - (time.monotonic() - started)))
        acknowledged += _deliver(producer, batch)
    for cap in captures.values():
        cap.release()
    log.info("scene %s: %d frame record(s) published", folder.name, acknowledged)
    return acknowledged


def _deliver(producer, batch: list) -> int:
    if batch and not producer.deliver(batch):
        raise RuntimeError("the broker did not acknowledge the scene's frames")
    return len(batch)
