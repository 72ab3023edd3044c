"""Image loading and the train/test transforms of the bag-of-tricks recipe.

Both pipelines end in a normalised float tensor [3, H, W]; the train one adds the
augmentations that matter for re-id (flip, pad + random crop, random erasing). Random
erasing runs after normalisation, so its fill value 0 is the dataset mean colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from reidstream.config import DataConfig
from reidstream.data.market import ImageRecord

Transform = Callable[[Image.Image], torch.Tensor]


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image (grey and RGBA files are converted, so every sample has 3 channels)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def build_train_transform(cfg: DataConfig, height: int, width: int) -> Transform:
    steps: list[Callable] = [v2.ToImage(), v2.Resize((height, width), antialias=True)]
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
        return self.transform(load_image(rec.path)), rec.pid, rec.camid, index

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]
