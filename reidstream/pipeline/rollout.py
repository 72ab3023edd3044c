"""Rolling a new embedder out to a running pipeline without mixing feature spaces.

``reidstream rollout CHECKPOINT`` (any process that can reach the Ray cluster) leaves a request
with the pipeline's control actor (a named Ray actor, one per consumer group). The driver takes
it between steps and:

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

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NAMESPACE = "reidstream"


def control_name(group_id: str) -> str:
    return f"control-{group_id}"


@dataclass
class RolloutRequest:
    id: int
    checkpoint: str
    model_version: str
    asked_at: float = field(default_factory=time.time)


class PipelineControl:
    """The named actor a running pipeline listens to (requests in, outcomes out)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: list[RolloutRequest] = []
        self._results: dict[int, dict[str, Any]] = {}

    def request_rollout(self, checkpoint: str, model_version: str = "") -> int:
        req = RolloutRequest(next(self._ids), checkpoint, model_version)
        self._pending.append(req)
        return req.id

    def take(self) -> RolloutRequest | None:
        return self._pending.pop(0) if self._pending else None

    def complete(self, request_id: int, result: dict[str, Any]) -> None:
        self._results[request_id] = result

    def result(self, request_id: int) -> dict[str, Any] | None:
        return self._results.get(request_id)


def start_control(group_id: str) -> Any:
    """The pipeline's control actor (a stale one of a dead driver is replaced)."""
    import ray

    name = control_name(group_id)
    with contextlib.suppress(ValueError):  # no such actor: nothing to replace
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    return (
        ray.remote(PipelineControl)
        .options(name=name, namespace=NAMESPACE, num_cpus=0)
        .remote()
    )


def request_rollout(
    group_id: str, checkpoint: str, model_version: str = "", timeout_s: float = 600.0
) -> dict[str, Any]:
    """Ask the running pipeline of ``group_id`` to roll ``checkpoint`` out; wait for it."""
    import ray

    try:
        control = ray.get_actor(control_name(group_id), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(
            f"no running pipeline of consumer group {group_id!r} on this Ray cluster "
            f"(actor {control_name(group_id)!r} in namespace {NAMESPACE!r})"
        ) from None
    request_id = ray.get(control.request_rollout.remote(checkpoint, model_version))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = ray.get(control.result.remote(request_id))
        if result is not None:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"the pipeline did not finish the roll-out within {timeout_s:g} s")


def resolve_checkpoint(checkpoint: str, cfg: Any) -> tuple[str, str]:
    """(absolute path, model version) of a checkpoint named by path or shipped name."""
    from reidstream.assets import Assets

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        path = Assets.from_config(cfg.assets).asset(checkpoint)
    return str(path.resolve()), path.stem
