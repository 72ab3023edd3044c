"""A person-only YOLOv8 graph and its decoding (``detection.head: person``).

We keep one class of eighty, yet the COCO graph scores all eighty for every anchor, decodes
every anchor's box (DFL: a softmax over 16 bins per side) and hands ~3,000 rows to NMS. This
graph is the same network with the class convolution cut to the person channel and no box
decoding: it returns the raw box bins and the person logit. :func:`decode` then decodes only
the anchors whose person score passes ``conf`` (tens of ~3,000). The boxes and scores of those
anchors are the COCO graph's; the one difference is that an anchor is a person when its person
score passes, even if another class scores higher there (a person on a bicycle).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

RAW_BINS = 16  # YOLOv8's DFL bins per box side (``reg_max``)
STRIDES = (8, 16, 32)


def person_graph(detection_model: Any, class_index: int = 0) -> Any:
    """The fused ``DetectionModel`` of YOLOv8 -> a torch module ``images [N,3,H,W] -> raw
    [N, 4*16 + 1, anchors]`` (box bins, then the person logit), anchors of the strides in order."""
    import torch
    from torch import nn

    class PersonGraph(nn.Module):
        def __init__(self, det: Any) -> None:
            super().__init__()
            head = det.model[-1]
            if int(head.reg_max) != RAW_BINS or tuple(int(s) for s in head.stride) != STRIDES:
                raise ValueError(f"not a YOLOv8 detect head: reg_max {head.reg_max}, "
                                 f"strides {head.stride.tolist()}")
            self.layers = det.model[:-1]
            self.save = set(det.save)
            self.head_from = list(head.f)
            self.box = head.cv2
            score = []
            for branch in head.cv3:
                last = branch[-1]
                conv = nn.Conv2d(last.in_channels, 1, 1)
                conv.weight.data = last.weight.data[class_index:class_index + 1].clone()
                conv.bias.data = last.bias.data[class_index:class_index + 1].clone()
                score.append(nn.Sequential(*branch[:-1], conv))
            self.score = nn.ModuleList(score)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kept: list[torch.Tensor | None] = []
            for m in self.layers:  # the backbone and neck, as DetectionModel runs them
                if m.f != -1:
                    x = kept[m.f] if isinstance(m.f, int) else [
                        x if j == -1 else kept[j] for j in m.f]
                x = m(x)
                kept.append(x if m.i in self.save else None)
            levels = [kept[j] for j in self.head_from]
            return torch.cat([torch.cat([b(f), s(f)], 1).flatten(2)
                              for f, b, s in zip(levels, self.box, self.score, strict=True)], 2)

    return PersonGraph(detection_model.fuse(verbose=False)).eval()


@functools.lru_cache(maxsize=16)
def _anchors(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] (x, y in input pixels) and their strides [A], in graph order.
    Cached per input size (a camera's frames share one): read-only, shared by every call."""
    points, strides = [], []
    for s in STRIDES:
        h, w = height // s, width // s
        ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], 1) * s)
        strides.append(np.full(h * w, s, dtype=np.float32))
    points, strides = np.concatenate(points).astype(np.float32), np.concatenate(strides)
    points.flags.writeable = strides.flags.writeable = False
    return points, strides


def decode(
    raw: np.ndarray, image_hw: tuple[int, int], conf: float, iou: float, max_det: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw graph output [N, 65, A] for images of ``image_hw`` -> per image (boxes [K, 4] xyxy
    in input pixels, scores [K]) after NMS, best first, as ultralytics' NMS keeps them."""
    import torch
    from torchvision.ops import nms

    raw = np.asarray(raw, dtype=np.float32)
    n_bins = 4 * RAW_BINS
    if raw.ndim != 3 or raw.shape[1] != n_bins + 1:
        raise ValueError(f"expected raw person-head output [N, {n_bins + 1}, A], got {raw.shape}")
    points, strides = _anchors(*image_hw)
    if raw.shape[2] != len(points):
        raise ValueError(f"{raw.shape[2]} anchors for a {image_hw} input, expected {len(points)}")
    logit_min = float(np.log(conf / (1.0 - conf)))  # score > conf <=> logit > this
    bins = np.arange(RAW_BINS, dtype=np.float32)
    out = []
    for image in raw:
        keep = np.flatnonzero(image[n_bins] > logit_min)
        if not len(keep):
            out.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
            continue
        scores = 1.0 / (1.0 + np.exp(-image[n_bins, keep]))
        dist = image[:n_bins, keep].T.reshape(-1, 4, RAW_BINS)  # per anchor: l, t, r, b bins
        dist = np.exp(dist - dist.max(axis=2, keepdims=True))
        dist = (dist / dist.sum(axis=2, keepdims=True)) @ bins  # [K, 4] in stride units
        dist *= strides[keep, None]
        centre = points[keep]
        boxes = np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], 1)
        order = nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()[:max_det]
        out.append((boxes[order], scores[order].astype(np.float32)))
    return out
