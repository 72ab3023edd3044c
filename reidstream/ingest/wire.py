"""The versioned wire format of the frames, match-events and tracks topics.

Documented for people in ``docs/wire-format.md``; keep the two in step. Decoding never trusts
the producer: every way a frame can be wrong raises :class:`BadMessage` with a short reason code
that callers count and log, so one bad camera cannot stop the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from reidstream.config import ConfigError, build_dataclass

WIRE_VERSION = 1  # frames topic headers
MATCH_SCHEMA_VERSION = 2  # match-events JSON (2 added ``kind``; 1 is read as all matches)
TRACK_SCHEMA_VERSION = 1  # tracks JSON
MATCH, RETRACT = "match", "retract"  # match-event kinds
EVENT_KINDS = (MATCH, RETRACT)

H_VERSION = "rs-version"
H_CAMERA = "camera"
H_TS_MS = "ts-ms"
H_FRAME = "frame"
H_MODALITY = "modality"
MODALITIES = ("visible", "infrared")

# Reason codes: stable strings, used as metric labels and in logs.
CORRUPT_JPEG = "corrupt_jpeg"
MISSING_HEADER = "missing_header"
MALFORMED_HEADER = "malformed_header"
UNSUPPORTED_VERSION = "unsupported_version"
CAMERA_MISMATCH = "camera_mismatch"
UNKNOWN_CAMERA = "unknown_camera"
EMPTY_FRAME = "empty_frame"
OVERSIZED_FRAME = "oversized_frame"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
MALFORMED_JSON = "malformed_json"
TOO_MANY_PIXELS = "too_many_pixels"  # the JPEG declares more pixels than allowed: not decoded
TIMESTAMP_JUMP = "timestamp_jump"  # one frame may not move a camera's clock (FrameOrder)
DETECTION_ERROR = "detection_error"  # the detector failed on this frame alone
TOO_MANY_CAMERAS = "too_many_cameras"  # a worker already tracks pipeline.max_cameras_per_worker
REASONS = (
    CORRUPT_JPEG,
    MISSING_HEADER,
    MALFORMED_HEADER,
    UNSUPPORTED_VERSION,
    CAMERA_MISMATCH,
    UNKNOWN_CAMERA,
    EMPTY_FRAME,
    OVERSIZED_FRAME,
    DUPLICATE,
    OUT_OF_ORDER,
    MALFORMED_JSON,
    TOO_MANY_PIXELS,
    TIMESTAMP_JUMP,
    DETECTION_ERROR,
    TOO_MANY_CAMERAS,
)

# Camera ids travel as Kafka keys, header values, metric labels and file names: keep them tame.
CAMERA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_UINT_RE = re.compile(rb"[0-9]{1,19}")
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RSTn: no length field

Headers = list[tuple[str, bytes]]
_Bad = Callable[..., "BadMessage"]


class BadMessage(Exception):
    """A record that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "", camera: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.camera = camera

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling into Ray actors
        return (type(self), (self.reason, self.detail, self.camera))


@dataclass(eq=False)
class Frame:
    camera: str
    ts_ms: int  # capture time, epoch milliseconds
    frame_index: int
    modality: str | None
    image: np.ndarray | None  # BGR, HxWx3 uint8; None until decode_pixels (pixels=False)
    jpeg: bytes | None = None  # the checked, not yet decoded JPEG (pixels=False)


def valid_camera(camera: object) -> bool:
    return isinstance(camera, str) and CAMERA_RE.fullmatch(camera) is not None


def encode_frame(
    camera: str,
    jpeg_bytes: bytes,
    ts_ms: int,
    frame_index: int,
    modality: str | None = None,
) -> tuple[bytes, bytes, Headers]:
    """``(key, value, headers)`` for one frame; the key puts a camera on one partition."""
    if not valid_camera(camera):
        raise ValueError(f"camera id {camera!r} must match {CAMERA_RE.pattern}")
    for name, number in (("ts_ms", ts_ms), ("frame_index", frame_index)):
        if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {number!r}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    if not jpeg_bytes:
        raise ValueError("empty frame")
    headers: Headers = [
        (H_VERSION, str(WIRE_VERSION).encode()),
        (H_CAMERA, camera.encode()),
        (H_TS_MS, str(int(ts_ms)).encode()),
        (H_FRAME, str(int(frame_index)).encode()),
    ]
    if modality is not None:
        headers.append((H_MODALITY, modality.encode()))
    return camera.encode(), bytes(jpeg_bytes), headers


def decode_frame(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    max_bytes: int,
    cameras: Collection[str] | None = None,
    max_pixels: int = 0,
    pixels: bool = True,
) -> Frame:
    """Check a frames-topic record and decode its JPEG, or raise :class:`BadMessage`.

    Cheap checks (headers, allow-list ``cameras``, size, and the pixel count the JPEG header
    declares, when ``max_pixels`` is set) run before the JPEG is decoded, so a flood of
    unwanted frames costs little and a small file declaring a huge image is never decoded.
    ``pixels=False`` stops there: the frame keeps its JPEG for :func:`decode_pixels`, for a
    reader that uses only some frames (a detection stride).
    """
    hdr = _header_map(headers, key)
    camera_hint = _camera_hint(key, hdr)

    def bad(reason: str, detail: str = "") -> BadMessage:
        return BadMessage(reason, detail, camera_hint)

    version = _uint_header(hdr, H_VERSION, bad)
    if version != WIRE_VERSION:
        raise bad(UNSUPPORTED_VERSION, f"rs-version {version}, this reader knows {WIRE_VERSION}")
    camera = _text_header(hdr, H_CAMERA, bad)
    if not valid_camera(camera):
        raise bad(MALFORMED_HEADER, f"camera {camera!r} is not a valid camera id")
    if key != hdr[H_CAMERA]:
        raise bad(CAMERA_MISMATCH, f"key {key!r} but camera header {camera!r}")
    if cameras and camera not in cameras:
        raise bad(UNKNOWN_CAMERA, f"camera {camera!r} is not in the allow-list")
    ts_ms = _uint_header(hdr, H_TS_MS, bad)
    frame_index = _uint_header(hdr, H_FRAME, bad)
    modality = None
    if H_MODALITY in hdr:
        modality = _text_header(hdr, H_MODALITY, bad)
        if modality not in MODALITIES:
            raise bad(MALFORMED_HEADER, f"modality {modality!r} not in {MODALITIES}")
    if not value:
        raise bad(EMPTY_FRAME, "no image bytes")
    if len(value) > max_bytes:
        raise bad(OVERSIZED_FRAME, f"{len(value)} bytes > limit {max_bytes}")
    _check_jpeg(value, bad, max_pixels)
    frame = Frame(camera, ts_ms, frame_index, modality, None, bytes(value))
    if pixels:
        decode_pixels(frame)
    return frame


def decode_pixels(frame: Frame) -> np.ndarray:
    """The image of a frame read with ``pixels=False`` (decoded once, then kept), or raise
    :class:`BadMessage` when its JPEG does not decode."""
    if frame.image is None:
        if frame.jpeg is None:
            raise ValueError("a frame with neither image nor JPEG")

        def bad(reason: str, detail: str = "") -> BadMessage:
            return BadMessage(reason, detail, frame.camera)

        frame.image, frame.jpeg = _decode_jpeg(frame.jpeg, bad), None
    return frame.image


def jpeg_encode(image: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def _header_map(headers: Iterable[tuple[str, bytes | None]] | None, key: bytes | None) -> dict:
    out: dict[str, bytes | None] = {}
    for name, value in headers or ():
        if name in out:
            raise BadMessage(
                MALFORMED_HEADER, f"header {name!r} appears twice", _camera_hint(key, out)
            )
        out[name] = value
    return out


def _camera_hint(key: bytes | None, hdr: Mapping[str, bytes | None]) -> str | None:
    """Best-effort camera for counting a bad record, only if it looks like a camera id."""
    for raw in (hdr.get(H_CAMERA), key):
        if isinstance(raw, bytes):
            text = raw.decode("utf-8", "replace")
            if valid_camera(text):
                return text
    return None


def _raw_header(hdr: Mapping[str, bytes | None], name: str, bad: _Bad) -> bytes:
    if name not in hdr:
        raise bad(MISSING_HEADER, f"no {name!r} header")
    raw = hdr[name]
    if not isinstance(raw, bytes) or not raw:
        raise bad(MALFORMED_HEADER, f"header {name!r} is empty")
    return raw


def _uint_header(hdr: Mapping[str, bytes | None], name: str, bad: _Bad) -> int:
    raw = _raw_header(hdr, name, bad)
    if not _UINT_RE.fullmatch(raw):
        raise bad(MALFORMED_HEADER, f"header {name!r}={raw[:32]!r} is not a non-negative integer")
    return int(raw)


def _text_header(hdr: Mapping[str, bytes | None], name: str, bad: _Bad) -> str:
    raw = _raw_header(hdr, name, bad)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad(MALFORMED_HEADER, f"header {name!r} is not UTF-8") from None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, without decoding; None if it has none.

    Walks the marker segments up to the first start-of-frame (SOF0..SOF15, not DHT/JPG/DAC).
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(
                data[i + 7 : i + 9], "big"
            )
        if length < 2:
            return None
        i += 2 + length
    return None


def _check_jpeg(value: bytes, bad: _Bad, max_pixels: int = 0) -> None:
    """What can be told without decoding: the JPEG markers and the declared size."""
    if not value.startswith(_JPEG_SOI):
        raise bad(CORRUPT_JPEG, "no JPEG start-of-image marker")
    # libjpeg fills a truncated image with grey and only warns: refuse it here instead.
    if not value.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise bad(CORRUPT_JPEG, "no JPEG end-of-image marker (truncated)")
    if max_pixels:
        size = jpeg_size(value)
        if size is None:
            raise bad(CORRUPT_JPEG, "no JPEG frame header")
        if size[0] * size[1] > max_pixels:
            raise bad(TOO_MANY_PIXELS, f"{size[1]}x{size[0]} declared, limit {max_pixels} pixels")


def _decode_jpeg(value: bytes, bad: _Bad) -> np.ndarray:
    import cv2

    try:
        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise bad(CORRUPT_JPEG, f"cv2.imdecode: {exc}") from None
    if image is None:
        raise bad(CORRUPT_JPEG, "cv2.imdecode could not decode it")
    if image.size == 0:
        raise bad(EMPTY_FRAME, "image has no pixels")
    return image


# ---- JSON topics ------------------------------------------------------------------------------


def make_event_id(
    camera: str,
    track_id: int,
    matched_camera: str,
    matched_track_id: int,
    model_version: str,
    kind: str = MATCH,
    revision: int = 0,
) -> str:
    """Same link, same id: a replay after a crash re-emits ids a consumer has already seen.

    A retraction hashes its kind too, so it never shares the id of the match it withdraws; a
    pair matched again after a retraction hashes its ``revision`` (how many times the pair was
    matched before), so the new match is not dropped as a repeat of the withdrawn one.
    """
    link: list[Any] = [camera, int(track_id), matched_camera, int(matched_track_id), model_version]
    if kind != MATCH:
        link.append(kind)
    if revision:
        link.append(int(revision))
    canon = json.dumps(link)
    return hashlib.blake2b(canon.encode(), digest_size=16).hexdigest()


class _JsonRecord:
    """to/from JSON for the dataclasses below, checked field by field against their types."""

    _what: ClassVar[str] = "record"
    _schemas: ClassVar[tuple[int, ...]] = ()  # versions this reader accepts, newest last

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"schema": data.pop("schema"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> Any:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadMessage(MALFORMED_JSON, f"{cls._what}: {exc}") from None
        if not isinstance(data, dict):
            raise BadMessage(MALFORMED_JSON, f"{cls._what}: expected a JSON object")
        camera = data.get("camera") if valid_camera(data.get("camera")) else None
        schema = data.get("schema", cls._schemas[-1])
        if schema not in cls._schemas:
            raise BadMessage(
                UNSUPPORTED_VERSION,
                f"{cls._what} schema {schema!r}, this reader knows {list(cls._schemas)}",
                camera,
            )
        # Tolerant reader: fields added later (same schema version) are ignored here.
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        data = {k: v for k, v in data.items() if k in known}
        try:
            obj = build_dataclass(cls, data, where=cls._what)
        except (ConfigError, ValueError, TypeError) as exc:
            raise BadMessage(MALFORMED_JSON, str(exc), camera) from None
        return obj

    def record(self) -> tuple[bytes, bytes, Headers]:
        """``(key, value, headers)``: keyed by camera, like the frames it came from."""
        camera: str = getattr(self, "camera")  # noqa: B009 (set by the dataclass)
        version = b"%d" % getattr(self, "schema")  # noqa: B009
        return camera.encode(), self.to_json().encode(), [(H_VERSION, version)]


def _check_box(box: list[float], what: str) -> None:
    if len(box) != 4:
        raise ValueError(f"{what} must be [x1, y1, x2, y2], got {box!r}")


def _box_row(row: list[float]) -> list[float]:
    """``[frame_index, ts_ms, x1, y1, x2, y2]`` with the first two whole numbers again: the
    reader types every cell as float, and JSON written back out should say ``12``, not ``12.0``.
    """
    if len(row) < 6:  # columns a later writer appends pass through
        raise ValueError(f"boxes row must be [frame_index, ts_ms, x1, y1, x2, y2], got {row!r}")
    frame, ts = row[0], row[1]
    if not all(isinstance(v, numbers.Real) and float(v).is_integer() for v in (frame, ts)):
        raise ValueError(f"boxes row {row!r}: frame index and ts_ms must be whole numbers")
    return [int(frame), int(ts), *row[2:]]


@dataclass
class CropRef:
    """Where the best crop of a track is: enough to fetch the frame again from the topic."""

    camera: str
    frame: int
    ts_ms: int
    box: list[float]

    def __post_init__(self) -> None:
        _check_box(self.box, "best_crop.box")


@dataclass
class MatchEvent(_JsonRecord):
    """A local track linked to a track in another camera (or the same camera after a gap)."""

    _what: ClassVar[str] = "match event"
    _schemas: ClassVar[tuple[int, ...]] = (1, MATCH_SCHEMA_VERSION)

    global_id: int
    camera: str
    track_id: int
    start_ms: int
    end_ms: int
    box: list[float]
    best_crop: CropRef
    matched_camera: str
    matched_track_id: int
    similarity: float
    model_version: str
    kind: str = MATCH  # MATCH, or RETRACT: the match of these two tracks is withdrawn
    revision: int = 0  # earlier matches of this pair (each later withdrawn); 0 the first time
    modality: str = "visible"  # of this track's camera (MODALITIES); added within schema 2
    matched_modality: str = "visible"  # of the matched track's
    event_id: str = ""  # filled from the fields above when empty
    schema: int = MATCH_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_box(self.box, "box")
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        for name in ("modality", "matched_modality"):
            if getattr(self, name) not in MODALITIES:
                raise ValueError(f"{name} must be one of {MODALITIES}, "
                                 f"got {getattr(self, name)!r}")
        if isinstance(self.best_crop, dict):
            self.best_crop = CropRef(**self.best_crop)
        if not self.event_id:
            self.event_id = make_event_id(
                self.camera,
                self.track_id,
                self.matched_camera,
                self.matched_track_id,
                self.model_version,
                self.kind,
                self.revision,
            )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return {"schema": data.pop("schema"), "event_id": data.pop("event_id"), **data}


@dataclass
class TrackSummary(_JsonRecord):
    """A finished (or periodically refreshed) local track and the identity it was given."""

    _what: ClassVar[str] = "track summary"
    _schemas: ClassVar[tuple[int, ...]] = (TRACK_SCHEMA_VERSION,)

    camera: str
    track_id: int
    global_id: int
    start_ms: int
    end_ms: int
    num_frames: int
    best_box: list[float]
    num_embeddings: int
    # One [frame_index, ts_ms, x1, y1, x2, y2] row per frame seen, oldest first.
    boxes: list[list[float]] = field(default_factory=list)
    summary_id: str = ""  # filled from the fields above when empty: a replayed summary repeats it
    schema: int = field(default=TRACK_SCHEMA_VERSION)

    def __post_init__(self) -> None:
        _check_box(self.best_box, "best_box")
        self.boxes = [_box_row(row) for row in self.boxes]
        if not self.summary_id:
            canon = json.dumps([self.camera, int(self.track_id), int(self.global_id),
                                int(self.start_ms), int(self.end_ms), int(self.num_frames)])
            self.summary_id = hashlib.blake2b(canon.encode(), digest_size=16).hexdigest()
