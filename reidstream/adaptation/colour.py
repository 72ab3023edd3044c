"""Clothing colour as a label-free descriptor: a prior for the first clusterings of an
unsupervised run.

An ImageNet network's features say little about who is who across two cameras (on
cuhk03-detected an image's nearest neighbour in the other camera is the same person 2-3 % of
the time), so the first pseudo-labels of fully unsupervised SpCL hold almost no right
cross-camera pair. Plain colour histograms of horizontal bands (head, torso, legs) do better
there (BENCHMARKS.md, "Four times the steps, and clothing colour as a prior"), and mixed with
the network's features they cluster more images, more precisely (``spcl.colour_weight``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

SIZE = (64, 128)  # (width, height) each image is resized to before counting


def colour_histograms(images: Iterable[Image.Image], stripes: int = 6, bins: int = 6) -> np.ndarray:
    """[N, stripes * bins**3] float32: square-rooted RGB histograms (``bins`` levels per
    channel) of ``stripes`` horizontal bands of each image, concatenated. Each band's part has
    unit L2 norm (the square root of a distribution), so every band counts the same."""
    if stripes < 1 or bins < 1 or bins > 256:
        raise ValueError(f"need stripes >= 1 and 1 <= bins <= 256, got {stripes}, {bins}")
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB").resize(SIZE), dtype=np.int64)
        bands = []
        for band in np.array_split(pixels, stripes, axis=0):
            levels = band.reshape(-1, 3) * bins // 256
            codes = (levels[:, 0] * bins + levels[:, 1]) * bins + levels[:, 2]
            bands.append(np.sqrt(np.bincount(codes, minlength=bins**3) / len(codes)))
        out.append(np.concatenate(bands))
    if not out:
        return np.zeros((0, stripes * bins**3), dtype=np.float32)
    return np.asarray(out, dtype=np.float32)
