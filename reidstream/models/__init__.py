"""Re-id models (``bot``, ``transreid``, ``dimn``, ``ddrl``), cameras, checkpoints, Embedder.

Importing the package registers every model in :data:`MODELS`.
"""

from reidstream.models.base import (
    MODELS,
    BNNeck,
    ReIDModel,
    ReIDOutput,
    build_model,
    run_model,
)
from reidstream.models.bot import BagOfTricks
from reidstream.models.cameras import CameraRegistry
from reidstream.models.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from reidstream.models.ddrl import DDRL
from reidstream.models.dimn import DIMN
from reidstream.models.embedder import Embedder
from reidstream.models.mobilenet import load_mobilenetv2_features
from reidstream.models.transreid import TransReID
from reidstream.models.vit import LoadReport, load_vit_pretrained

__all__ = [
    "BNNeck",
    "BagOfTricks",
    "CameraRegistry",
    "CheckpointError",
    "DDRL",
    "DIMN",
    "Embedder",
    "LoadReport",
    "LoadedCheckpoint",
    "MODELS",
    "ReIDModel",
    "ReIDOutput",
    "TransReID",
    "build_model",
    "run_model",
    "load_checkpoint",
    "load_mobilenetv2_features",
    "load_vit_pretrained",
    "save_checkpoint",
]
