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


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class ImageDataset(Dataset):
    """Records -> ``(image, pid, camid, index)``; the index lets callers find the record again."""

    def __init__(self, records: Sequence[ImageRecord], transform: Transform) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        rec = self.records[index]
        image = load_image(rec.data if rec.data is not None else rec.path)
        return self.transform(image), rec.pid, rec.camid, index

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]
