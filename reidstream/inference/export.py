"""Export the detector and the re-id models to ONNX, cached by what they were made from.

A file's name carries a hash of its source (the detector's weights file; the embedder's
weights, config and unknown-camera policy), so a changed checkpoint never reuses a stale
export and every actor on a node shares one file. Writes go to a temporary name first and
are renamed into place: actors exporting at once cannot read half a file.

The embedder graph takes ``images`` (float32 ``[N, 3, H, W]``, normalised) and
``camera_ids`` (int64 ``[N]``, -1 for a camera the model never saw) and returns the raw
features; L2 normalisation and the site calibration stay outside, shared by every backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from reidstream.assets import sha256_of

OPSET = 17
# Bump when the exported graph's contract changes: old cache entries then miss.
EXPORT_FORMAT = 1
DETECTOR_HEADS = ("person", "coco")  # detection.head


def cache_dir(configured: str) -> Path:
    path = Path(os.path.expandvars(configured)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(target: Path, write: Any) -> Path:
    """``write(tmp_path)`` then rename to ``target``; the manifest lands beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / target.name
        write(tmp_file)
        os.replace(tmp_file, target)
    return target


def write_manifest(target: Path, info: dict[str, Any]) -> None:
    info = {"format": EXPORT_FORMAT, "opset": OPSET, "file": target.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    target.with_suffix(".json").write_text(json.dumps(info, indent=2))


def export_detector(
    weights: str | Path, out_dir: str | Path, force: bool = False, head: str = "person"
) -> Path:
    """YOLO weights -> ONNX with dynamic batch and image size.

    ``head``: ``person`` exports :func:`~reidstream.detection.person_head.person_graph` (raw
    box bins and the person logit, ``[N, 65, anchors]``); ``coco`` ultralytics' own export
    (decoded boxes and all classes, ``[N, 4 + classes, anchors]``)."""
    from reidstream.detection.detector import offline_ultralytics

    if head not in DETECTOR_HEADS:
        raise ValueError(f"detection.head must be one of {DETECTOR_HEADS}, got {head!r}")
    weights = Path(weights)
    digest = sha256_of(weights)[:12]  # cached: Assets already hashed it to verify it
    suffix = "" if head == "coco" else f"-{head}"
    target = Path(out_dir) / f"detector-{weights.stem}-{digest}-f{EXPORT_FORMAT}{suffix}.onnx"
    if target.is_file() and not force:
        return target

    def write(tmp_file: Path) -> None:
        offline_ultralytics()
        from ultralytics import YOLO

        # ultralytics writes beside its input: give it a private copy of the weights.
        local = tmp_file.parent / weights.name
        shutil.copy2(weights, local)
        yolo = YOLO(str(local), task="detect")
        if head == "coco":
            produced = yolo.export(format="onnx", dynamic=True, simplify=True, opset=OPSET,
                                   device="cpu", verbose=False)
            os.replace(produced, tmp_file)
            return
        from reidstream.detection.person_head import person_graph

        graph = person_graph(yolo.model.float().cpu())
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                graph, (torch.zeros(1, 3, 320, 416),), str(tmp_file), input_names=["images"],
                output_names=["raw"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"images": {0: "n", 2: "height", 3: "width"},
                              "raw": {0: "n", 2: "anchors"}},
            )

    write_atomically(target, write)
    output = ("raw [N, 4 x 16 box bins + person logit, anchors]" if head == "person"
              else "predictions [N, 4 + classes, anchors]")
    write_manifest(target, {"kind": "detector", "head": head, "source": str(weights),
                            "sha256_12": digest, "inputs": ["images"], "output": output})
    return target


def model_digest(model: Any, unknown_camera: str) -> str:
    """Hash of everything the graph depends on: weights, architecture config, policy."""
    import dataclasses

    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode())
    digest.update(unknown_camera.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def export_embedder(
    model: Any, out_dir: str | Path, name: str = "embedder", force: bool = False
) -> Path:
    """A re-id model (eval mode, its ``unknown_camera`` policy baked in) -> ONNX.

    A graph cannot raise, so the ``error`` policy is traced as ``zero``: whoever runs the
    export checks for unknown cameras before it does (``Embedder``)."""
    if getattr(model, "takes_modality", False):
        raise TypeError(f"model {model.cfg.name!r} reads a modality per crop, which the ONNX "
                        "graph has no input for: serve it with embed.backend=torch")
    policy = getattr(model, "unknown_camera", "mean")
    digest = model_digest(model, policy)
    target = Path(out_dir) / f"embedder-{name}-{digest}-f{EXPORT_FORMAT}.onnx"
    if target.is_file() and not force:
        return target
    height, width = model.cfg.img_height, model.cfg.img_width
    wrapper = _EmbedGraph(model).eval()
    # Two samples, one with an unknown camera, so the traced graph keeps both SIE paths.
    example = (torch.randn(2, 3, height, width), torch.tensor([0, -1], dtype=torch.long))

    def write(tmp_file: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                wrapper, example, str(tmp_file), input_names=["images", "camera_ids"],
                output_names=["features"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"images": {0: "n"}, "camera_ids": {0: "n"}, "features": {0: "n"}},
            )

    was_training = model.training
    model.eval()
    if policy == "error":
        model.unknown_camera = "zero"
    try:
        write_atomically(target, write)
    finally:
        model.train(was_training)
        if policy == "error":
            model.unknown_camera = policy
    write_manifest(target, {"kind": "embedder", "model": model.cfg.name, "digest": digest,
                       "unknown_camera": policy, "inputs": ["images", "camera_ids"],
                       "image_size": [height, width], "feature_dim": int(model.feature_dim)})
    return target


class _EmbedGraph(torch.nn.Module):
    """The model with its output as the embedding tensor in float32."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor, camera_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(images, camera_ids).float()
