"""Image loading and the train/test transforms of the bag-of-tricks recipe.

Both pipelines end in a normalised float tensor [3, H, W]; the train one adds the
augmentations that matter for re-id (flip, pad + random crop, random erasing). Random
erasing runs after normalisation, so its fill value 0 is the dataset mean colour.

``data.degrade_prob`` adds what a deployed camera does to a person the dataset shows sharp:
a far person is few pixels tall and the stream is compressed. Such an image is shrunk to a
random height and JPEG-compressed before the usual resize brings it back to the input size.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from reidstream.config import DataConfig
from reidstream.data.market import ImageRecord

Transform = Callable[[Image.Image], torch.Tensor]


def load_image(path: str | Path | bytes) -> Image.Image:
    """An RGB PIL image from a file or encoded bytes (grey and RGBA are converted, so every
    sample has 3 channels)."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(source) as img:
        return img.convert("RGB")


class RandomDegrade:
    """With probability ``p``: shrink to a height in [min_height, height) and JPEG-compress."""

    def __init__(self, p: float, min_height: int, jpeg_quality: Sequence[int]) -> None:
        low, high = (int(q) for q in jpeg_quality)
        if not 0.0 <= p <= 1.0 or min_height < 8 or not 1 <= low <= high <= 100:
            raise ValueError(
                f"degrade needs 0 <= p <= 1, min_height >= 8 and 1 <= quality range <= 100, "
                f"got p={p}, min_height={min_height}, jpeg_quality={list(jpeg_quality)}"
            )
        self.p, self.min_height, self.quality = p, min_height, (low, high)

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        width, height = img.size
        if height > self.min_height:
            new_h = random.randint(self.min_height, height - 1)
            img = img.resize((max(4, round(width * new_h / height)), new_h), Image.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=random.randint(*self.quality))
        buffer.seek(0)
        with Image.open(buffer) as compressed:
            return compressed.convert("RGB")


def build_train_transform(cfg: DataConfig, height: int, width: int) -> Transform:
    steps: list[Callable] = []
    if cfg.degrade_prob > 0:
        steps.append(
            RandomDegrade(cfg.degrade_prob, cfg.degrade_min_height, cfg.degrade_jpeg_quality)
        )
    steps += [v2.ToImage(), v2.Resize((height, width), antialias=True)]
    if cfg.flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.flip_prob))
    if cfg.pad > 0:
        steps += [v2.Pad(cfg.pad), v2.RandomCrop((height, width))]
    steps += _to_normalised_tensor(cfg.mean, cfg.std)
    if cfg.erase_prob > 0:
        steps.append(v2.RandomErasing(p=cfg.erase_prob, value=0.0))
    return v2.Compose(steps)


def build_test_transform(cfg: DataConfig, height: int, width: int) -> Transform:
    steps = [v2.ToImage(), v2.Resize((height, width), antialias=True)]
    return v2.Compose(steps + _to_normalised_tensor(cfg.mean, cfg.std))


def load_record_image(rec: ImageRecord) -> Image.Image:
    """A record's image: its bytes (a harvest) or its file, rendered as its camera shows it
    (an infrared proxy's images)."""
    image = load_image(rec.data if rec.data is not None else rec.path)
    if not rec.render:
        return image
    from reidstream.data.crossmodal import render

    bgr = np.ascontiguousarray(np.asarray(image)[..., ::-1])
    return Image.fromarray(np.ascontiguousarray(render(rec, bgr)[..., ::-1]))


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class CameraColourTransfer:
    """With probability ``p``, show a crop as another camera of its site would: its colour
    statistics (per-channel mean and spread in CIELAB) are replaced by those of a camera drawn
    from the others. A site's cameras differ most in colour response; a track seen "through"
    every camera is a cross-camera positive the site gives for free (CamStyle's idea, with
    colour statistics instead of a generator).

    ``stats``: SIE camera row -> (mean[3], std[3]) of its crops' LAB pixels.
    """

    def __init__(self, p: float, stats: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"camera colour transfer probability must be in [0, 1], got {p}")
        self.p = p
        self.stats = {int(k): (np.asarray(m, np.float32), np.asarray(s, np.float32))
                      for k, (m, s) in stats.items()}

    def __call__(self, img: Image.Image, camid: int) -> tuple[Image.Image, int]:
        """The image as camera ``new`` would show it, and ``new`` (its side information too:
        the crop now stands for a view of that camera)."""
        others = [c for c in self.stats if c != camid]
        if camid not in self.stats or not others or random.random() >= self.p:
            return img, camid
        import cv2

        new = random.choice(others)
        mean, std = self.stats[camid]
        new_mean, new_std = self.stats[new]
        lab = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2LAB).astype(np.float32)
        lab = (lab - mean) / np.maximum(std, 1e-3) * new_std + new_mean
        rgb = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
        return Image.fromarray(rgb), new


def lab_statistics(images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the images' CIELAB pixels (uint8 scale)."""
    import cv2

    pixels = np.concatenate([
        cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2LAB).reshape(-1, 3)
        for img in images
    ]).astype(np.float32)
    return pixels.mean(axis=0), pixels.std(axis=0)


class ImageDataset(Dataset):
    """Records -> ``(image, pid, camid, index)``; the index lets callers find the record again.

    ``camera_transfer`` (optional) re-colours target-domain images (``domain >= target_domain``)
    as other cameras of the site, before ``transform``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform,
        camera_transfer: CameraColourTransfer | None = None,
        target_domain: int = 0,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.camera_transfer = camera_transfer
        self.target_domain = target_domain

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        rec = self.records[index]
        image = load_record_image(rec)
        camid = rec.camid
        if self.camera_transfer is not None and rec.domain >= self.target_domain:
            image, camid = self.camera_transfer(image, camid)
        return self.transform(image), rec.pid, camid, index

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]
