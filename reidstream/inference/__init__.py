"""Exported inference: the detector and re-id models as ONNX, run by ONNX Runtime or OpenVINO
(TensorRT / CUDA execution providers on a GPU), chosen by ``detection.backend`` and
``embed.backend`` (``auto``: the fastest one installed, timed on the spot); the detector also
in int8 (``quantize.py``) where the CPU has no native bf16."""

from reidstream.inference.backends import (
    BACKENDS,
    BackendUnavailable,
    Session,
    installed_backends,
    pick_fastest,
    resolve_precision,
)
from reidstream.inference.export import export_detector, export_embedder
from reidstream.inference.quantize import quantize_detector, quantize_embedder

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Session",
    "export_detector",
    "export_embedder",
    "installed_backends",
    "pick_fastest",
    "quantize_detector",
    "quantize_embedder",
    "resolve_precision",
]
