"""Rolling a new embedder out to a running pipeline without mixing feature spaces.

``reidstream rollout CHECKPOINT`` (any process that can reach the Ray cluster) leaves a request
with the pipeline's control actor (:mod:`reidstream.pipeline.control`). The driver takes it
between steps and:

1. starts the new embedder actors (the old ones keep serving meanwhile);
2. stops handing out steps and waits for the steps in flight: frames not yet polled wait in
   Kafka, so none is dropped or re-ordered;
3. has the linker embed every live track's stored crops with the new model into a new gallery
   generation (new shards if the width changed) and take the new model's site calibration, so
   no query of one model is ever compared with vectors of the other;
4. switches every camera worker to the new embedders (their cached crop vectors are dropped),
   retires the old embedders, and resumes. Events from then on carry the new model version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidstream.pipeline.control import ask


def request_rollout(
    group_id: str, checkpoint: str, model_version: str = "", timeout_s: float = 600.0
) -> dict[str, Any]:
    """Ask the running pipeline of ``group_id`` to roll ``checkpoint`` out; wait for it."""
    return ask(group_id, "rollout", {"checkpoint": checkpoint, "model_version": model_version},
               timeout_s)


def resolve_checkpoint(checkpoint: str, cfg: Any) -> tuple[str, str]:
    """(absolute path, model version) of a checkpoint named by path or shipped name."""
    from reidstream.assets import Assets

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        path = Assets.from_config(cfg.assets).asset(checkpoint)
    return str(path.resolve()), path.stem
