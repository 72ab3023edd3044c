"""``reidstream synth``: multi-camera videos with exact ground truth, from real person images.

Only held-out identities are used (the dataset's query and gallery splits; a training split is
refused), so a model trained on the train split never saw anyone in the scene. Camera k of the
scene shows the dataset's camera-k images of each identity: a person walks across camera 1
showing their camera-1 images, then, after a random transit time, across camera 2 showing
their camera-2 images, which is the cross-camera re-id problem with a known answer.

Each walk is a straight crossing of the view (entering and leaving at the side edges, with a
little vertical drift), a few seconds long. Height follows a ground-plane perspective: the
lower the feet in the frame, the taller the person. The identity's images are cycled every
``crop_period_frames`` frames, resized to the walk's height and pasted with a feathered mask
(hard in the middle, fading at the sides and corners) so the image's own background blends
into the view while the person stays intact for a detector. People nearer the camera (feet
lower) are drawn last and occlude those behind; the truth records each box's visible fraction.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reidstream.assets import Assets
from reidstream.config import Config, ScenesConfig
from reidstream.scenes.style import CameraStyle, camera_styles, style_fields
from reidstream.scenes.truth import (
    MANIFEST_FILE,
    TRUTH_FILE,
    CameraInfo,
    SceneTruth,
    TruthBox,
    Walk,
    manifest_for,
)

log = logging.getLogger(__name__)

# Container -> fourcc this OpenCV build both writes and reads back (checked in the tests).
FOURCC = {"mp4": "mp4v", "avi": "MJPG", "mkv": "FFV1"}
# The ground band people walk on, as fractions of the frame height (feet y).
FAR_FEET, NEAR_FEET = 0.45, 0.98
MIN_VISIBLE = 0.01  # visible fraction below which a person is left out of the truth


@dataclass
class WalkPlan:
    """How one walk moves: feet position at its first and last frame, height by perspective."""

    walk: Walk
    camera_index: int
    x_start: float  # box centre x at the first frame
    x_end: float
    feet_start: float  # feet y at the first frame
    feet_end: float

    def position(self, frame: int) -> tuple[float, float]:
        """(centre x, feet y) at a frame of the walk."""
        span = max(1, self.walk.last_frame - self.walk.first_frame)
        t = (frame - self.walk.first_frame) / span
        return (
            self.x_start + (self.x_end - self.x_start) * t,
            self.feet_start + (self.feet_end - self.feet_start) * t,
        )


def identity_images(
    assets: Assets, cfg: ScenesConfig, train_split: str = "bounding_box_train"
) -> dict[int, dict[int, list[Path]]]:
    """pid -> 0-based dataset camera -> image paths, from the configured held-out splits."""
    from reidstream.data.market import read_market_folder

    if train_split in cfg.splits:
        raise ValueError(
            f"scenes.splits {cfg.splits} includes the training split {train_split!r}; "
            "scenes are built from held-out identities only"
        )
    root = assets.dataset(cfg.dataset)
    images: dict[int, dict[int, list[Path]]] = {}
    for split in cfg.splits:
        for rec in read_market_folder(root / split, keep_distractors=False):
            images.setdefault(rec.pid, {}).setdefault(rec.camid, []).append(rec.path)
    return images


def person_height(feet_y: float, cfg: ScenesConfig, height: int) -> float:
    """Perspective: height in pixels grows linearly from the far to the near edge of the band."""
    lo, hi = ground_band(cfg, height)
    small, tall = person_height_range(cfg, height)
    t = (feet_y - lo) / max(1e-6, hi - lo)
    return small + (tall - small) * min(1.0, max(0.0, t))


def person_height_range(cfg: ScenesConfig, height: int) -> tuple[float, float]:
    small, tall = (float(v) for v in cfg.person_height)
    tall = min(tall, 0.9 * height)
    return min(small, tall), tall


def ground_band(cfg: ScenesConfig, height: int) -> tuple[float, float]:
    small, _ = person_height_range(cfg, height)
    return max(FAR_FEET * height, small + 2.0), NEAR_FEET * height


def _uniform(rng: random.Random, bounds: Sequence[float]) -> float:
    lo, hi = float(bounds[0]), float(bounds[-1])
    return rng.uniform(min(lo, hi), max(lo, hi))


def plan_scene(
    images: dict[int, dict[int, list[Path]]], cfg: ScenesConfig
) -> tuple[list[WalkPlan], int]:
    """Choose identities and lay out every walk; returns the walks and the scene length."""
    ncam = len(cfg.cameras)
    if ncam < 2:
        raise ValueError("scenes.cameras needs at least two camera names")
    eligible = sorted(p for p, cams in images.items() if all(cams.get(k) for k in range(ncam)))
    part, parts = pool_part(cfg.pool)
    eligible = eligible[part::parts]
    if cfg.identities < 1 or cfg.identities > len(eligible):
        raise ValueError(
            f"asked for {cfg.identities} identities; {len(eligible)} in {cfg.dataset} "
            f"{cfg.splits} (pool {part} of {parts}) have images from all {ncam} cameras"
        )
    rng = random.Random(cfg.seed)
    chosen = rng.sample(eligible, cfg.identities)  # also the order they enter camera 1
    fps = cfg.fps
    lo, hi = ground_band(cfg, cfg.height)
    plans: list[WalkPlan] = []
    next_entry = 0.0
    entries: dict[tuple[int, bool], list[float]] = {}  # (camera, side) -> entry times
    min_gap = 0.5 * min(cfg.walk_seconds)
    for pid in chosen:
        enter = next_entry
        next_entry += _uniform(rng, cfg.entry_gap_seconds)
        for k in range(ncam):
            duration = _uniform(rng, cfg.walk_seconds)
            leftwards = rng.random() < 0.5
            # Two people entering from one side keep apart so they do not start as one blob.
            side = entries.setdefault((k, leftwards), [])
            while clash := [e for e in side if abs(e - enter) < min_gap - 1e-6]:
                enter = max(clash) + min_gap
            side.append(enter)
            feet0 = rng.uniform(lo, hi)
            feet1 = min(hi, max(lo, feet0 + rng.uniform(-0.12, 0.12) * cfg.height))
            w0 = 0.5 * person_height(feet0, cfg, cfg.height)
            w1 = 0.5 * person_height(feet1, cfg, cfg.height)
            x0, x1 = -0.2 * w0, cfg.width + 0.2 * w1
            if leftwards:
                x0, x1 = cfg.width + 0.2 * w0, -0.2 * w1
            paths = sorted(images[pid][k])
            rng.shuffle(paths)
            first = int(round(enter * fps))
            walk = Walk(
                pid=pid,
                camera=cfg.cameras[k],
                first_frame=first,
                last_frame=first + max(2, int(round(duration * fps))) - 1,
                images=[p.name for p in paths],
            )
            plans.append(WalkPlan(walk, k, x0, x1, feet0, feet1))
            enter = (walk.last_frame + 1) / fps + _uniform(rng, cfg.transit_seconds)
    num_frames = max(p.walk.last_frame for p in plans) + 1 + int(round(fps))
    return plans, num_frames


def pool_part(pool: Sequence[int]) -> tuple[int, int]:
    """``scenes.pool`` [k, n]: the scene draws its people from part k of n of the eligible
    identities (every n-th in id order), so scenes of different parts share nobody."""
    if len(pool) != 2 or not 0 <= int(pool[0]) < int(pool[1]):
        raise ValueError(f"scenes.pool must be [k, n] with 0 <= k < n, got {list(pool)}")
    return int(pool[0]), int(pool[1])


def feather_mask(width: int, height: int, feather: float) -> np.ndarray:
    """Alpha for a pasted person image: 1 in the middle, smooth fade over the side margins.

    Sides fade over ``feather`` of the width, top and bottom over a quarter of that (head and
    feet touch the top and bottom of a tight person box, so they must stay opaque); the
    product rounds the corners, where the image's own background shows most.
    """

    def ramp(n: int, margin: float) -> np.ndarray:
        pos = (np.arange(n, dtype=np.float32) + 0.5) / n
        edge = np.minimum(pos, 1.0 - pos) / max(margin, 1e-6)
        edge = np.clip(edge, 0.0, 1.0)
        return edge * edge * (3.0 - 2.0 * edge)  # smoothstep

    fx = ramp(width, feather) if feather > 0 else np.ones(width, np.float32)
    fy = ramp(height, feather / 4) if feather > 0 else np.ones(height, np.float32)
    return fy[:, None] * fx[None, :]


class SceneRenderer:
    """Draws one camera's frames; keeps the decoded person images between frames."""

    def __init__(
        self,
        cfg: ScenesConfig,
        background: np.ndarray,
        image_paths: dict[str, Path],
        style: CameraStyle | None = None,
    ):
        self.cfg = cfg
        self.background = background
        self.image_paths = image_paths
        self.style = style or CameraStyle()
        self._images: dict[str, np.ndarray] = {}
        self._noise = np.random.default_rng(cfg.seed + 7919)

    def image(self, name: str) -> np.ndarray:
        import cv2

        if name not in self._images:
            img = cv2.imread(str(self.image_paths[name]), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"cannot read person image {self.image_paths[name]}")
            self._images[name] = img
        return self._images[name]

    def render(
        self, frame: int, ts_ms: int, plans: list[WalkPlan]
    ) -> tuple[np.ndarray, list[TruthBox]]:
        """The frame image and the truth rows of the people in it."""
        import cv2

        cfg = self.cfg
        H, W = self.background.shape[:2]
        canvas = self.background.astype(np.float32)
        placed = []
        for plan in plans:
            cx, feet = plan.position(frame)
            h = person_height(feet, cfg, H)
            w = 0.5 * h
            box = (cx - w / 2, feet - h, cx + w / 2, feet)
            placed.append((feet, plan, box))
        placed.sort(key=lambda item: item[0])  # far first: nearer people are drawn over them
        layers = []
        for _feet, plan, box in placed:
            walk = plan.walk
            step = (frame - walk.first_frame) // max(1, cfg.crop_period_frames)
            person = self.image(walk.images[step % len(walk.images)])
            x1, y1 = int(round(box[0])), int(round(box[1]))
            pw, ph = max(2, int(round(box[2] - box[0]))), max(2, int(round(box[3] - box[1])))
            interp = cv2.INTER_AREA if ph < person.shape[0] else cv2.INTER_LINEAR
            patch = cv2.resize(person, (pw, ph), interpolation=interp).astype(np.float32)
            alpha = feather_mask(pw, ph, cfg.feather)
            # Clip the patch to the frame.
            cx1, cy1 = max(0, x1), max(0, y1)
            cx2, cy2 = min(W, x1 + pw), min(H, y1 + ph)
            if cx2 <= cx1 or cy2 <= cy1:
                layers.append(None)
                continue
            sub = (slice(cy1 - y1, cy2 - y1), slice(cx1 - x1, cx2 - x1))
            a = alpha[sub][..., None]
            roi = canvas[cy1:cy2, cx1:cx2]
            roi *= 1.0 - a
            roi += a * patch[sub]
            layers.append((plan, (x1, y1, pw, ph), (cx1, cy1, cx2, cy2), alpha))
        if cfg.noise_std > 0:
            canvas += self._noise.normal(0.0, cfg.noise_std, canvas.shape).astype(np.float32)
        image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        image = self.style.apply(image, self._noise)
        return image, self._truth_rows(frame, ts_ms, layers, W, H)

    def _truth_rows(self, frame: int, ts_ms: int, layers: list, W: int, H: int) -> list[TruthBox]:
        """Visible fraction of each person: opaque mask pixels in frame, not covered by nearer."""
        covered = np.zeros((H, W), bool)
        rows = []
        for layer in reversed(layers):  # nearest first
            if layer is None:
                continue
            plan, (x1, y1, _pw, _ph), (cx1, cy1, cx2, cy2), alpha = layer
            solid = alpha > 0.5
            total = int(solid.sum())
            own = solid[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
            region = covered[cy1:cy2, cx1:cx2]
            visible = int((own & ~region).sum())
            region |= own
            if total == 0 or visible < MIN_VISIBLE * total:
                continue  # a sliver at the edge or behind someone: not in the truth
            rows.append(
                TruthBox(
                    camera=plan.walk.camera,
                    frame=frame,
                    ts_ms=ts_ms,
                    pid=plan.walk.pid,
                    box=(float(cx1), float(cy1), float(cx2), float(cy2)),
                    visibility=visible / total,
                )
            )
        rows.sort(key=lambda b: b.pid)
        return rows


def video_writer(path: Path, fps: float, width: int, height: int):
    import cv2

    ext = path.suffix.lstrip(".").lower()
    if ext not in FOURCC:
        raise ValueError(f"video container {ext!r} not supported; use one of {sorted(FOURCC)}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[ext]), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"this OpenCV build cannot write {path} ({FOURCC[ext]})")
    return writer


def synthesize(
    cfg: ScenesConfig, assets: Assets, out_dir: str | Path, train_split: str = "bounding_box_train"
) -> SceneTruth:
    """Render every camera's video into ``out_dir`` and write truth.json and manifest.json."""
    from reidstream.scenes.backgrounds import BACKGROUNDS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = identity_images(assets, cfg, train_split)
    plans, num_frames = plan_scene(images, cfg)
    by_name = {p.name: p for cams in images.values() for paths in cams.values() for p in paths}
    styles = camera_styles(cfg.style, cfg.camera_styles, len(cfg.cameras))
    cameras = [
        CameraInfo(
            name=name,
            video=f"{name}.{cfg.video_ext}",
            dataset_camera=k + 1,
            style=style_fields(styles[k]),
        )
        for k, name in enumerate(cfg.cameras)
    ]
    truth = SceneTruth(
        dataset=cfg.dataset,
        splits=list(cfg.splits),
        seed=cfg.seed,
        fps=cfg.fps,
        width=cfg.width,
        height=cfg.height,
        start_ms=cfg.start_ms,
        num_frames=num_frames,
        cameras=cameras,
        walks=[p.walk for p in plans],
        boxes=[],
    )
    for k, cam in enumerate(cameras):
        background = BACKGROUNDS.build(cfg.background, assets, cfg, cfg.width, cfg.height, k)
        renderer = SceneRenderer(cfg, background, by_name, styles[k])
        mine = sorted((p for p in plans if p.camera_index == k), key=lambda p: p.walk.first_frame)
        writer = video_writer(out / cam.video, cfg.fps, cfg.width, cfg.height)
        try:
            for frame in range(num_frames):
                active = [p for p in mine if p.walk.first_frame <= frame <= p.walk.last_frame]
                image, rows = renderer.render(frame, truth.ts_ms(frame), active)
                writer.write(image)
                truth.boxes.extend(rows)
        finally:
            writer.release()
        log.info("wrote %s: %d frames, %d walks", out / cam.video, num_frames, len(mine))
    truth.save(out / TRUTH_FILE)
    manifest_for(truth).save(out / MANIFEST_FILE)
    return truth


def apply_synth_flags(cfg: Config, args: argparse.Namespace) -> ScenesConfig:
    """Command-line flags win over the config file and overrides."""
    sc = cfg.scenes
    if args.dataset:
        sc.dataset = args.dataset
    if args.identities is not None:
        sc.identities = args.identities
    if args.seed is not None:
        sc.seed = args.seed
    if args.fps is not None:
        sc.fps = float(args.fps)
    if args.style:
        sc.style = args.style
    if args.pool:
        try:
            sc.pool = [int(v) for v in args.pool.split("/")]
        except ValueError:
            raise ValueError(f"--pool {args.pool!r}: expected K/N, e.g. 0/2") from None
        pool_part(sc.pool)
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {args.size!r}: expected WxH, e.g. 640x360") from None
        sc.width, sc.height = w, h
    return sc


def add_arguments_run_synth(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--dataset", help="dataset name or folder (scenes.dataset)")
    parser.add_argument("--identities", type=int, help="identities in the scene")
    parser.add_argument("--out", help="output folder (default: scenes.out_dir/<name>)")
    parser.add_argument("--seed", type=int, help="layout seed (scenes.seed)")
    parser.add_argument("--fps", type=float, help="frame rate (scenes.fps)")
    parser.add_argument("--size", help="frame size WxH (scenes.width/height)")
    parser.add_argument("--style", help="camera style preset, e.g. site1 (scenes.style)")
    parser.add_argument("--pool", help="identity pool K/N: part K of N of the people (scenes.pool)")
    parser.add_argument(
        "--check-detector",
        type=int,
        metavar="N",
        default=0,
        help="then run the detection.* YOLO on every N-th frame and print its recall",
    )


def run_synth(args: argparse.Namespace) -> int:
    from reidstream.cli import load_cli_config

    cfg = load_cli_config(args)
    sc = apply_synth_flags(cfg, args)
    out = Path(args.out) if args.out else Path(sc.out_dir) / scene_name(sc)
    truth = synthesize(sc, Assets.from_config(cfg.assets), out, cfg.data.train_split)
    pairs = sum(1 for cams in truth.cross_camera_pids().values() if len(cams) > 1)
    print(
        f"scene {out}: {len(truth.cameras)} cameras x {truth.num_frames} frames "
        f"({truth.num_frames / truth.fps:.1f} s at {truth.fps:g} fps, "
        f"{truth.width}x{truth.height}), {len(truth.pids)} identities, "
        f"{pairs} cross-camera identities, {len(truth.boxes)} truth boxes"
    )
    print(f"  truth:    {out / TRUTH_FILE}")
    print(f"  manifest: {out / MANIFEST_FILE}")
    for cam in truth.cameras:
        print(f"  {cam.name}: {out / cam.video}")
    if args.check_detector:
        print_detector_recall(cfg, out, every=args.check_detector)
    return 0


def scene_name(sc: ScenesConfig) -> str:
    """Default folder name: dataset, size and seed, then the style and pool when not default."""
    name = f"{Path(sc.dataset).name}-{sc.identities}id-seed{sc.seed}"
    if sc.style and sc.style != "none":
        name += f"-{sc.style}"
    part, parts = pool_part(sc.pool)
    if parts > 1:
        name += f"-pool{part}of{parts}"
    return name


def print_detector_recall(cfg: Config, scene_dir: Path, every: int = 1) -> None:
    """Recall of the pipeline's own detector on the scene, at a few score thresholds."""
    from reidstream.detection import PersonDetector
    from reidstream.scenes.check import detector_recall

    detector = PersonDetector(cfg.detection, Assets.from_config(cfg.assets), cfg.inference)
    for vis in (0.7, cfg.scenes.min_visibility):
        r = detector_recall(scene_dir, detector, min_visibility=vis, every=every)
        cells = ", ".join(
            f"score>={s:g}: recall {r.recall(s):.3f} precision {r.precision(s):.3f}"
            for s in sorted(r.found)
        )
        print(
            f"{cfg.detection.model} imgsz {cfg.detection.imgsz} on {r.truth_boxes} truth boxes "
            f"(visibility >= {vis:g}, every {every} frame(s)), IoU >= 0.5: {cells}; "
            f"median IoU {np.median(r.matched_iou or [0.0]):.3f}"
        )
