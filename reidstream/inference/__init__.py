"""Exported inference: the detector and re-id models as ONNX, run by ONNX Runtime or OpenVINO
(TensorRT / CUDA execution providers on a GPU), chosen by ``detection.backend`` and
``embed.backend`` (``auto``: the fastest one installed, timed on the spot)."""

from reidstream.inference.backends import (
    BACKENDS,
    BackendUnavailable,
    Session,
    installed_backends,
    pick_fastest,
)
from reidstream.inference.export import export_detector, export_embedder

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Session",
    "export_detector",
    "export_embedder",
    "installed_backends",
    "pick_fastest",
]
