"""The running pipeline's control actor: how other processes talk to its driver.

One named Ray actor per consumer group (``control-<group>`` in namespace ``reidstream``).
Requests (a roll-out, a scale) go in from any process that reaches the Ray cluster
(``reidstream rollout``, ``reidstream deploy``); the driver takes them between steps, serves
them while no worker step runs, and leaves the outcome. The driver also leaves a status
report every few seconds (counts, rates, lag, backends) for ``reidstream deploy status``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "reidstream"
KINDS = ("rollout", "scale", "stop")


def control_name(group_id: str) -> str:
    return f"control-{group_id}"


@dataclass
class Request:
    id: int
    kind: str  # one of KINDS
    args: dict[str, Any]
    asked_at: float = field(default_factory=time.time)


class PipelineControl:
    """Requests in, outcomes and status reports out."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: list[Request] = []
        self._results: dict[int, dict[str, Any]] = {}
        self._status: dict[str, Any] = {}
        self._stages: dict[str, Any] = {}

    def assign(self, stages: dict[str, Any]) -> None:
        """The driver's current stage actors (``detectors``, ``embedders`` lists, ``linker``,
        ``sink``, ``harvest``) and ``model_version``."""
        self._stages = stages

    def stages(self, index: int) -> dict[str, Any] | None:
        """What camera worker ``index`` uses now (asked when it starts or restarts); None
        until the driver has assigned them (this actor just restarted)."""
        s = self._stages
        if not s:
            return None
        return {"detector": s["detectors"][index % len(s["detectors"])],
                "embedder": s["embedders"][index % len(s["embedders"])],
                "linker": s["linker"], "sink": s["sink"], "harvest": s["harvest"],
                "model_version": s["model_version"]}

    def request(self, kind: str, args: dict[str, Any]) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown request {kind!r}: expected one of {KINDS}")
        req = Request(next(self._ids), kind, dict(args))
        self._pending.append(req)
        return req.id

    def take(self) -> tuple[Request | None, bool]:
        """The next request, and whether stages are assigned (False: this actor was
        restarted, empty; the driver assigns them again)."""
        return (self._pending.pop(0) if self._pending else None), bool(self._stages)

    def complete(self, request_id: int, result: dict[str, Any]) -> None:
        self._results[request_id] = result

    def result(self, request_id: int) -> dict[str, Any] | None:
        return self._results.get(request_id)

    def report(self, status: dict[str, Any]) -> None:
        self._status = {**status, "reported_at": time.time()}

    def status(self) -> dict[str, Any]:
        return self._status


def start_control(group_id: str, options: dict[str, Any] | None = None) -> Any:
    """The pipeline's control actor (a stale one of a dead driver is replaced); ``options``:
    its Ray resources (placement). It lives beside the driver where it can (a node lost with
    the driver loses the pipeline anyway) and Ray restarts it, empty, wherever it died: the
    driver then assigns the stages again (requests in it at that moment are lost)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = control_name(group_id)
    with contextlib.suppress(ValueError):  # no such actor: nothing to replace
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    beside_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                   soft=True)
    return (
        ray.remote(PipelineControl)
        .options(**{"num_cpus": 0, **(options or {})}, name=name, namespace=NAMESPACE,
                 max_restarts=-1, max_task_retries=-1, scheduling_strategy=beside_driver)
        .remote()
    )


def stages_for(group_id: str, index: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """Worker ``index``'s stages from the control actor, waiting while a restarted control
    actor has not been given them again."""
    import ray

    deadline = time.monotonic() + timeout_s
    while (stages := ray.get(find_control(group_id).stages.remote(index))) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the driver of {group_id!r} assigned no stages in {timeout_s:g} s")
        time.sleep(0.5)
    return stages


def find_control(group_id: str) -> Any:
    """The control actor of the running pipeline of ``group_id``, or a clear error."""
    import ray

    try:
        return ray.get_actor(control_name(group_id), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(
            f"no running pipeline of consumer group {group_id!r} on this Ray cluster "
            f"(actor {control_name(group_id)!r} in namespace {NAMESPACE!r})"
        ) from None


def ask(group_id: str, kind: str, args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Leave a request with the running pipeline of ``group_id`` and wait for its outcome."""
    import ray

    control = find_control(group_id)
    request_id = ray.get(control.request.remote(kind, args))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = ray.get(control.result.remote(request_id))
        if result is not None:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"the pipeline did not finish the {kind} within {timeout_s:g} s")


def pipeline_status(group_id: str) -> dict[str, Any]:
    """The latest status report of the running pipeline of ``group_id`` ({} before the first)."""
    import ray

    return ray.get(find_control(group_id).status.remote(), timeout=30)
