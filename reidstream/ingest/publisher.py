"""Publish a video file, an RTSP/HTTP stream, a webcam or a folder of images as camera frames.

Each frame gets a real capture timestamp (the wall clock when it was read, paced to ``fps``)
and a per-run frame index, then goes to the frames topic keyed by camera (see
``docs/wire-format.md``). One source can feed several cameras through view transforms, which
is how the demo turns one real video into two overlapping camera views. Several recordings,
one camera each, go out together on one clock (:func:`publish_cameras`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidstream.config import KafkaConfig
from reidstream.ingest.producer import OutRecord, SafeProducer
from reidstream.ingest.wire import encode_frame, jpeg_encode

log = logging.getLogger(__name__)

View = Callable[[np.ndarray], np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
DEFAULT_FPS = 10.0  # image folders, and videos that do not say

# The demo's two views: each sees 60% of the frame width, overlapping in the middle 20%, so
# people walk out of one view and into the other.
VIEW_FRACTION = 0.6


# ---- views ------------------------------------------------------------------------------------


def crop_view(x1: float, y1: float, x2: float, y2: float) -> View:
    """A view that crops the fractional box [x1, x2) x [y1, y2) of each frame."""
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ValueError(
            f"crop box must satisfy 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1: {(x1, y1, x2, y2)}"
        )

    def view(frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        return frame[round(y1 * h) : round(y2 * h), round(x1 * w) : round(x2 * w)]

    return view


def _colour_lut() -> np.ndarray:
    """A second camera's colour response: warmer white balance, lifted shadows, less contrast."""
    v = np.arange(256, dtype=np.float32) / 255.0
    gains = {0: 0.82, 1: 0.97, 2: 1.12}  # B, G, R
    lut = np.empty((1, 256, 3), np.uint8)
    for channel, gain in gains.items():
        curve = 0.06 + 0.9 * np.power(v, 0.8) * gain
        lut[0, :, channel] = np.clip(curve * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut


_LUT = _colour_lut()
_left = crop_view(0.0, 0.0, VIEW_FRACTION, 1.0)
_right = crop_view(1.0 - VIEW_FRACTION, 0.0, 1.0, 1.0)


def view_left(frame: np.ndarray) -> np.ndarray:
    """Camera 1 of the demo: the left 60% of the frame, colours as recorded."""
    return np.ascontiguousarray(_left(frame))


def view_right(frame: np.ndarray) -> np.ndarray:
    """Camera 2 of the demo: the right 60% of the frame, through a different colour response."""
    import cv2

    return cv2.LUT(np.ascontiguousarray(_right(frame)), _LUT)


def overlapping_views(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two camera views of one frame that overlap in the middle fifth of its width."""
    return view_left(frame), view_right(frame)


VIEWS: dict[str, View | None] = {"full": None, "left": view_left, "right": view_right}


def parse_view(spec: str | None) -> View | None:
    """``full`` | ``left`` | ``right`` | ``crop:x1,y1,x2,y2`` (fractions of the frame)."""
    if not spec:
        return None
    if spec in VIEWS:
        return VIEWS[spec]
    if spec.startswith("crop:"):
        try:
            x1, y1, x2, y2 = (float(v) for v in spec[5:].split(","))
        except ValueError:
            raise ValueError(f"view {spec!r}: expected crop:x1,y1,x2,y2 with 4 numbers") from None
        return crop_view(x1, y1, x2, y2)
    raise ValueError(f"unknown view {spec!r}; use one of {sorted(VIEWS)} or crop:x1,y1,x2,y2")


# ---- sources ----------------------------------------------------------------------------------


@dataclass
class Source:
    """Frames from somewhere; ``live`` sources cannot be paced, only thinned."""

    name: str
    fps: float | None
    live: bool
    frames: Callable[[], Iterator[np.ndarray]]  # a fresh pass over the source


def open_source(spec: str | Path) -> Source:
    """A video file, an image folder, a stream URL or a webcam index (``0``)."""
    text = str(spec)
    path = Path(text).expanduser()
    if text.startswith(STREAM_SCHEMES) or text.isdigit():
        device: str | int = int(text) if text.isdigit() else text
        probe = _capture(device)
        fps = _capture_fps(probe)
        probe.release()
        return Source(text, fps, True, lambda: _read_capture(device))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return Source(text, None, False, lambda: _read_images(files))
    if path.is_file():
        probe = _capture(str(path))
        fps = _capture_fps(probe)
        probe.release()
        return Source(text, fps, False, lambda: _read_capture(str(path)))
    raise FileNotFoundError(f"{text!r} is not a video file, image folder, stream URL or webcam")


def _capture(device: str | int):
    import cv2

    cap = cv2.VideoCapture(device)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video source {device!r}")
    return cap


def _capture_fps(cap) -> float | None:
    import cv2

    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and 0 < fps < 1000 else None


def _read_capture(device: str | int) -> Iterator[np.ndarray]:
    cap = _capture(device)
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            yield frame
    finally:
        cap.release()


def _read_images(files: list[Path]) -> Iterator[np.ndarray]:
    import cv2

    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("skipping unreadable image %s", path)
            continue
        yield image


# ---- publishing -------------------------------------------------------------------------------


def _passes(src: Source, loop: bool, stop: threading.Event | None) -> Iterator[np.ndarray]:
    """The source's frames; with ``loop`` a file starts over and a live stream reconnects."""
    while True:
        count = 0
        try:
            for image in src.frames():
                count += 1
                yield image
        except FileNotFoundError as exc:
            if not (src.live and loop):
                raise
            log.warning("%s: %s", src.name, exc)
        if not loop or (count == 0 and not src.live) or (stop is not None and stop.is_set()):
            return
        if src.live:
            log.warning("%s: stream ended; reconnecting in 1 s", src.name)
            time.sleep(1.0)


@dataclass
class PublishStats:
    frames: int = 0  # source frames read and published (to every camera)
    records: int = 0  # records handed to Kafka
    bytes: int = 0
    dropped: int = 0  # records the client could not take in time (broker away)
    failed: int = 0  # records taken but never acknowledged (delivery timeout)
    seconds: float = 0.0
    per_camera: Counter[str] = field(default_factory=Counter)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def _sending(
    cfg: KafkaConfig,
    cameras: list[str],
    topic: str,
    producer: SafeProducer | None,
    jpeg_quality: int | None,
    modality: str | None,
) -> Iterator[tuple[Callable[[str, np.ndarray | bytes, int, int], None], PublishStats]]:
    """``send(camera, image or JPEG bytes, ts_ms, index)`` and the stats it fills: what the
    publishers share (encoding, delivery counting, the final flush and the closing log line)."""
    quality = cfg.jpeg_quality if jpeg_quality is None else jpeg_quality
    own_producer = producer is None
    producer = producer or SafeProducer(cfg, name=f"publisher {','.join(cameras)}")
    stats = PublishStats()
    failed_before = producer.stats["failed"]
    start = time.monotonic()

    def send(camera: str, image: np.ndarray | bytes, ts_ms: int, index: int) -> None:
        jpeg = image if isinstance(image, bytes) else jpeg_encode(image, quality)
        record = OutRecord(topic, *encode_frame(camera, jpeg, ts_ms, index, modality))
        if producer.send(dataclasses.replace(record, timestamp_ms=ts_ms)) is None:
            stats.dropped += 1
        else:
            stats.records += 1
            stats.bytes += len(record.value)
            stats.per_camera[camera] += 1

    try:
        yield send, stats
    finally:
        producer.flush()
        stats.failed = producer.stats["failed"] - failed_before
        if own_producer:
            producer.close()
        stats.seconds = time.monotonic() - start
        log.info(
            "published %d frame(s) (%d record(s), %.1f MB, %d dropped, %d failed) in %.1f s",
            stats.frames,
            stats.records,
            stats.bytes / 1e6,
            stats.dropped,
            stats.failed,
            stats.seconds,
        )


def publish(
    cfg: KafkaConfig,
    source: str | Path,
    cameras: Mapping[str, View | None],
    fps: float | None = None,
    *,
    loop: bool = False,
    max_frames: int | None = None,
    jpeg_quality: int | None = None,
    modality: str | None = None,
    topic: str | None = None,
    producer: SafeProducer | None = None,
    stop: threading.Event | None = None,
) -> PublishStats:
    """Publish ``source`` to each camera in ``cameras`` (through its view), paced to ``fps``.

    ``fps`` None uses the source's own rate; 0 publishes as fast as possible. All cameras of one
    source frame share its capture timestamp and frame index, like synchronised cameras. A
    broker that goes away drops frames (counted in ``dropped``) rather than stopping.
    """
    if not cameras:
        raise ValueError("no cameras to publish to")
    src = open_source(source)
    rate = (src.fps or DEFAULT_FPS) if fps is None else float(fps)
    if rate < 0:
        raise ValueError(f"fps must be >= 0, got {fps}")
    period = 1.0 / rate if rate > 0 else 0.0
    topic = topic or cfg.frames_topic
    next_t = time.monotonic()
    index = 0
    log.info(
        "publishing %s as camera(s) %s to %s at %s",
        src.name,
        ", ".join(cameras),
        topic,
        f"{rate:g} fps" if rate else "full speed",
    )
    with _sending(cfg, list(cameras), topic, producer, jpeg_quality, modality) as (send, stats):
        for image in _passes(src, loop, stop):
            if (stop is not None and stop.is_set()) or index == max_frames:
                break
            if period and src.live and time.monotonic() < next_t:
                continue  # a live camera runs at its own rate: thin it, never queue it
            next_t = _paced(next_t, period, stop)
            ts_ms = time.time_ns() // 1_000_000
            for camera, view in cameras.items():
                send(camera, view(image) if view else image, ts_ms, index)
            stats.frames += 1
            index += 1
    return stats


def encode_ahead(
    source: str | Path,
    cameras: Mapping[str, View | None],
    frames: int,
    jpeg_quality: int,
) -> list[dict[str, bytes]]:
    """The first ``frames`` frames of ``source`` (fewer if it is shorter) through each camera's
    view, JPEG-encoded once, ahead of time: for :func:`publish_encoded`, so that a benchmark's
    simulated cameras cost the machine under test only their sending, as real cameras (which
    compress on their own hardware) do."""
    src = open_source(source)
    if src.live:
        raise ValueError(f"{src.name} is live: only a recording can be encoded ahead")
    out: list[dict[str, bytes]] = []
    for image in src.frames():
        if len(out) == frames:
            break
        out.append({camera: jpeg_encode(view(image) if view else image, jpeg_quality)
                    for camera, view in cameras.items()})
    if not out:
        raise ValueError(f"{src.name} has no frames")
    return out


def publish_encoded(
    cfg: KafkaConfig,
    frames: list[dict[str, bytes]],
    fps: float,
    *,
    max_frames: int,
    stop: threading.Event | None = None,
) -> PublishStats:
    """Publish frames from :func:`encode_ahead` (``{camera: JPEG}`` each), paced to ``fps``,
    looping over them until ``max_frames`` ticks; stamped and numbered as :func:`publish`."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not frames:
        raise ValueError("no frames to publish")
    period = 1.0 / fps
    next_t = time.monotonic()
    with _sending(cfg, list(frames[0]), cfg.frames_topic, None, None, None) as (send, stats):
        for index in range(max_frames):
            if stop is not None and stop.is_set():
                break
            next_t = _paced(next_t, period, stop)
            ts_ms = time.time_ns() // 1_000_000
            for camera, jpeg in frames[index % len(frames)].items():
                send(camera, jpeg, ts_ms, index)
            stats.frames += 1
    return stats


def _paced(next_t: float, period: float, stop: threading.Event | None) -> float:
    """Wait for a frame's slot ``next_t``; returns the next slot (late: no catch-up burst)."""
    now = time.monotonic()
    if period and now < next_t:
        _wait(next_t - now, stop)
    return max(next_t + period, time.monotonic() - period)


def publish_cameras(
    cfg: KafkaConfig,
    feeds: Mapping[str, str | Path | tuple[str | Path, View | None]],
    fps: float | None = None,
    *,
    loop: bool = False,
    max_frames: int | None = None,
    jpeg_quality: int | None = None,
    modality: str | None = None,
    topic: str | None = None,
    producer: SafeProducer | None = None,
    stop: threading.Event | None = None,
) -> PublishStats:
    """Publish several recordings, one camera each (``{camera: source or (source, view)}``),
    on one clock, as ``reidstream.scenes.replay`` does for a rendered scene.

    Frame i of every camera is taken as the same instant: it is stamped ``start + i / fps``
    (the wall clock at the start, then the nominal clock, so the gaps between cameras are the
    recordings' own whatever the publishing speed) and sent camera after camera, in capture
    order. ``fps`` None is the recordings' common rate; 0 sends as fast as the broker takes it,
    still stamped at that rate. A recording that ends drops out; the others go on.
    ``stats.frames`` counts clock ticks.
    """
    if not feeds:
        raise ValueError("no cameras to publish to")
    sources: dict[str, tuple[Source, View | None]] = {}
    for camera, feed in feeds.items():
        spec, view = feed if isinstance(feed, tuple) else (feed, None)
        src = open_source(spec)
        if src.live:
            raise ValueError(
                f"camera {camera}: {src.name} is live; cameras on one clock must be recordings "
                "(publish a live stream with its own `reidstream publish SOURCE --camera NAME`)"
            )
        sources[camera] = (src, view)
    if fps is not None and fps < 0:
        raise ValueError(f"fps must be >= 0, got {fps}")
    clock = float(fps) if fps else _common_rate(sources)
    period = 1.0 / clock if fps is None or fps > 0 else 0.0
    topic = topic or cfg.frames_topic
    frames = {camera: _passes(src, loop, stop) for camera, (src, _) in sources.items()}
    log.info(
        "publishing %s to %s on one %g fps clock%s",
        ", ".join(f"{camera}={src.name}" for camera, (src, _) in sources.items()),
        topic,
        clock,
        "" if period else ", sent at full speed",
    )
    with _sending(cfg, list(sources), topic, producer, jpeg_quality, modality) as (send, stats):
        start = time.monotonic()
        base_ms = time.time_ns() // 1_000_000
        index = 0
        while frames and index != max_frames and not (stop is not None and stop.is_set()):
            images = {camera: next(it, None) for camera, it in frames.items()}
            for camera in [c for c, image in images.items() if image is None]:
                del frames[camera]  # that recording ended
            if not frames:
                break
            if period:  # never before the instant the stamp names; behind it, no waiting
                _wait(start + index * period - time.monotonic(), stop)
            ts_ms = base_ms + round(index * 1000 / clock)
            for camera, image in images.items():
                if image is not None:
                    view = sources[camera][1]
                    send(camera, view(image) if view else image, ts_ms, index)
            stats.frames += 1
            index += 1
    return stats


def _common_rate(sources: Mapping[str, tuple[Source, View | None]]) -> float:
    """The one frame rate of the recordings; different rates need an explicit ``fps``."""
    rates = {camera: src.fps for camera, (src, _) in sources.items() if src.fps}
    if len({round(r, 3) for r in rates.values()}) > 1:
        found = ", ".join(f"{camera} {rate:g} fps" for camera, rate in rates.items())
        raise ValueError(f"the recordings run at different rates ({found}): give --fps N (N > 0) "
                         "for the clock they share")
    return next(iter(rates.values()), DEFAULT_FPS)


def _wait(seconds: float, stop: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop is not None:
        stop.wait(seconds)
    else:
        time.sleep(seconds)


def publish_video(
    cfg: KafkaConfig,
    video_path: str | Path,
    camera: str,
    fps: float | None = None,
    view: View | None = None,
    max_frames: int | None = None,
    **kwargs,
) -> PublishStats:
    """Publish one video as one camera (see :func:`publish` for the keyword arguments)."""
    return publish(cfg, video_path, {camera: view}, fps, max_frames=max_frames, **kwargs)
