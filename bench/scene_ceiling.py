"""How well the embedder could link a synth scene's people, before detection and video get a say.

    python bench/scene_ceiling.py runs/synth/cuhk03-labeled-40id-seed0 [--checkpoint NAME]
        [--degrade HEIGHT:QUALITY ...] [section.key=value ...]

For every person of the scene, the dataset images its truth walks showed are embedded with
the camera's side information, and averaged per camera. Printed: for how many people the
nearest camera-1 mean of their camera-2 mean is their own. With ``--degrade 96:30`` the images
are first shrunk to 96 px tall, given the synth renderer's sensor noise and JPEG-compressed at
quality 30 (quality 0: no compression), so the cost of a far, compressed person is measured
apart from detection and tracking. Compare with the pipeline's own figure, ``bench scene``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reidstream.assets import Assets  # noqa: E402
from reidstream.config import load_config  # noqa: E402
from reidstream.models import Embedder  # noqa: E402
from reidstream.scenes.truth import SceneTruth, load_manifest  # noqa: E402


def degrade(image: np.ndarray, height: int, quality: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(4, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    small = np.clip(small + rng.normal(0.0, 2.0, small.shape), 0, 255).astype(np.uint8)
    if quality:
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
        small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return small


def nearest_right(
    truth: SceneTruth, images: dict[str, Path], embedder: Embedder, setting: tuple[int, int] | None
) -> tuple[int, int]:
    """(people whose camera-2 mean is nearest their own camera-1 mean, people in both)."""
    rng = np.random.default_rng(0)
    first, second = truth.camera_names[:2]
    trained_camera = {c.name: f"c{c.dataset_camera}" for c in truth.cameras}
    means: dict[tuple[int, str], np.ndarray] = {}
    for walk in truth.walks:
        crops = [cv2.imread(str(images[name])) for name in walk.images]
        if setting is not None:
            crops = [degrade(c, setting[0], setting[1], rng) for c in crops]
        mean = embedder.embed(crops, [trained_camera[walk.camera]] * len(crops)).mean(axis=0)
        means[(walk.pid, walk.camera)] = mean / np.linalg.norm(mean)
    pids = sorted(p for p, cam in means if cam == first and (p, second) in means)
    ones = np.stack([means[(p, first)] for p in pids])
    twos = np.stack([means[(p, second)] for p in pids])
    nearest = (twos @ ones.T).argmax(axis=1)
    return int((nearest == np.arange(len(pids))).sum()), len(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scene", help="a synth scene folder")
    parser.add_argument("--checkpoint", default="", help="embed.checkpoint (default: shipped)")
    parser.add_argument("--degrade", nargs="*", default=[], metavar="HEIGHT:QUALITY")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.checkpoint:
        overrides.append(f"embed.checkpoint={args.checkpoint}")
    cfg = load_config(overrides=overrides)
    assets = Assets.from_config(cfg.assets)
    manifest, folder = load_manifest(args.scene)
    truth = SceneTruth.load(folder / manifest.truth)
    root = assets.dataset(truth.dataset)
    images = {p.name: p for split in truth.splits for p in (root / split).glob("*.jpg")}
    embedder = Embedder.from_config(cfg, assets)
    settings = [None] + [tuple(int(v) for v in s.split(":")) for s in args.degrade]
    for setting in settings:
        right, people = nearest_right(truth, images, embedder, setting)
        what = "dataset images" if setting is None else f"{setting[0]} px, JPEG {setting[1]}"
        print(f"{what:24s} nearest right {right}/{people}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
