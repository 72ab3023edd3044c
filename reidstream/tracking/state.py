"""What one camera knows about one track: when it was seen, where, and its best crops.

The crop set is what gets embedded, so it is kept small (top-N by quality) and varied (kept
crops are at least ``min_crop_gap`` frames apart: consecutive frames are near-duplicates, while
crops spread over the track show more poses and lighting).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from reidstream.config import TrackingConfig
from reidstream.tracking.quality import cut_crop


@dataclass(eq=False)
class BoxRecord:
    frame_index: int
    ts_ms: int
    box: np.ndarray  # float32 [4] xyxy
    score: float


@dataclass(eq=False)
class Crop:
    image: np.ndarray  # BGR, a copy owned by the crop
    quality: float
    frame_index: int
    ts_ms: int
    box: np.ndarray  # float32 [4] xyxy in the frame
    score: float


@dataclass(eq=False)
class TrackState:
    """One track's lifecycle; ``crops`` is sorted best first and never longer than max_crops."""

    track_id: int
    camera: str
    first_frame: int
    first_ts_ms: int
    last_frame: int
    last_ts_ms: int
    frame_shape: tuple[int, int]
    history_len: int
    hits: int = 0
    boxes: deque[BoxRecord] = field(default_factory=deque)
    crops: list[Crop] = field(default_factory=list)
    crops_since_last_embed: int = 0
    embed_count: int = 0

    def __post_init__(self) -> None:
        self.boxes = deque(self.boxes, maxlen=self.history_len)

    @property
    def duration_ms(self) -> int:
        return self.last_ts_ms - self.first_ts_ms

    @property
    def last_box(self) -> np.ndarray:
        return self.boxes[-1].box

    @property
    def best_crop(self) -> Crop | None:
        return self.crops[0] if self.crops else None

    def observe(
        self, frame_index: int, ts_ms: int, box: np.ndarray, score: float, fill_gap: int = 0
    ) -> None:
        """Record a detected box. Frames skipped by a detection stride (a gap of at most
        ``fill_gap`` frames since the last box) get boxes interpolated between the two, so the
        track's history stays per frame; a longer gap is a miss and stays a gap."""
        if self.boxes and fill_gap > 0:
            last = self.boxes[-1]
            gap = frame_index - last.frame_index
            for k in range(1, gap if gap <= fill_gap + 1 else 0):
                w = k / gap
                self.boxes.append(BoxRecord(
                    last.frame_index + k, round(last.ts_ms + w * (ts_ms - last.ts_ms)),
                    ((1 - w) * last.box + w * box).astype(np.float32), 0.0,
                ))
        self.last_frame = frame_index
        self.last_ts_ms = ts_ms
        self.hits += 1
        self.boxes.append(BoxRecord(frame_index, ts_ms, box, score))

    def offer_crop(
        self,
        quality: float,
        frame: np.ndarray,
        frame_index: int,
        ts_ms: int,
        box: np.ndarray,
        score: float,
        cfg: TrackingConfig,
    ) -> bool:
        """Keep this frame's crop if it earns a place in the top-N; the pixels are copied only then.

        A candidate within ``min_crop_gap`` frames of kept crops must beat all of them and
        replaces them; otherwise it needs a free slot or to beat the worst kept crop.
        """
        if quality <= 0 or quality < cfg.min_quality or cfg.max_crops <= 0:
            return False
        near = [c for c in self.crops if abs(c.frame_index - frame_index) < cfg.min_crop_gap]
        if near:
            if quality <= max(c.quality for c in near):
                return False
            self.crops = [c for c in self.crops if all(c is not n for n in near)]
        elif len(self.crops) >= cfg.max_crops:
            if quality <= self.crops[-1].quality:
                return False
            self.crops.pop()
        crop = Crop(cut_crop(frame, box), float(quality), frame_index, ts_ms, box.copy(), score)
        self.crops.append(crop)
        self.crops.sort(key=lambda c: c.quality, reverse=True)
        self.crops_since_last_embed += 1
        return True

    def mark_embedded(self) -> None:
        """Call after embedding this track's crops, so refreshes count new crops from here."""
        self.embed_count += 1
        self.crops_since_last_embed = 0
