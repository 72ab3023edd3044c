"""The pipeline as a Ray job: submitted with its config as the job's only file, found again
by its consumer group, stopped by draining.

The job's entrypoint is ``reidstream run job.yaml --address auto`` and ``job.yaml`` travels in
the job's working directory: no setting, and never a secret, is on a command line or in the
job's metadata (secrets are read on the nodes from environment variables or files:
docs/secrets.md).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GROUP_KEY = "reidstream_group"  # job metadata: which pipeline (consumer group) a job runs
ACTIVE = ("PENDING", "RUNNING")
AGENT_WAIT_S = 180.0  # how long a submission waits for a fresh head's job agent (a loaded
# 2-core head took more than 60 s to register it)


def job_client(dashboard: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard)


def pipeline_jobs(client: Any, group: str) -> list[Any]:
    """This pipeline's jobs, newest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get(GROUP_KEY) == group]
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def active_job(client: Any, group: str) -> Any | None:
    return next((j for j in pipeline_jobs(client, group) if str(j.status) in ACTIVE
                 or getattr(j.status, "value", None) in ACTIVE), None)


def submit_pipeline(client: Any, cfg: Any, settings: dict[str, Any]) -> str:
    """Submit ``reidstream run`` with ``settings`` (the merged config as a mapping) as its
    config file; returns the submission id."""
    group = cfg.kafka.group_id
    submission_id = f"reidstream-{group}-{time.strftime('%Y%m%d-%H%M%S')}"
    deadline = time.monotonic() + AGENT_WAIT_S
    with tempfile.TemporaryDirectory(prefix="reidstream-deploy-") as folder:
        (Path(folder) / "job.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        while True:
            try:
                return client.submit_job(
                    entrypoint="reidstream run job.yaml --address auto",
                    runtime_env={"working_dir": folder},
                    submission_id=submission_id,
                    metadata={GROUP_KEY: group},
                )
            except RuntimeError as exc:
                # A head that just started: its job agent registers a few seconds later.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2.0)


def status_of(client: Any, submission_id: str) -> str:
    status = client.get_job_status(submission_id)
    return getattr(status, "value", str(status))


def logs_tail(client: Any, submission_id: str, lines: int = 40) -> str:
    try:
        return "\n".join(client.get_job_logs(submission_id).splitlines()[-lines:])
    except Exception as exc:  # noqa: BLE001 - logs are a courtesy on the error path
        return f"(no logs: {exc})"


def wait_terminal(client: Any, submission_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := status_of(client, submission_id)) in ACTIVE:
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return status
