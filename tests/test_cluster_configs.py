"""The shipped Ray cluster configs, the image they name and the production pipeline config
(issue 12): checked with Ray's own cluster-config code, and token auth shown on a real head
started the way deploy/ray_cluster.local.yaml starts one."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLOUD = {"aws": ROOT / "ray_cluster.yaml", "gcp": ROOT / "deploy" / "ray_cluster.gcp.yaml"}
LOCAL = ROOT / "deploy" / "ray_cluster.local.yaml"
CONFIGS = {**CLOUD, "local": LOCAL}
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PIPELINE = ROOT / "deploy" / "pipeline.yaml"
ROLES = ("head_node", "gpu_node", "cpu_node")
SHARED_MOUNT = "/mnt/reidstream"
TOKEN_FILE = "~/.ray/auth_token"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def raw(name: str) -> dict[str, Any]:
    return yaml.safe_load(CONFIGS[name].read_text())


def prepared(name: str) -> dict[str, Any]:
    """The config as `ray up` sees it before it asks the cloud anything: Ray's defaults filled
    in, then checked against Ray's schema (ray.autoscaler._private.commands._bootstrap_config
    runs these two; the rest needs cloud credentials)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw(name)))
    validate_config(config)
    return config


def ray_starts(config: dict[str, Any], key: str) -> list[str]:
    return [c for c in config[key] if "ray start" in c]


def all_commands(config: dict[str, Any]) -> list[str]:
    commands = [c for key in COMMAND_LISTS for c in config.get(key, [])]
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key, [])
    return commands


def role_json(command: str) -> list[dict[str, float]]:
    """The single-quoted JSON objects of a start command: what `--resources` gets."""
    return [json.loads(found) for found in re.findall(r"'(\{[^']*\})'", command)]


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def pin(name: str) -> str:
    match = re.search(rf'"{name}==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, f"{name} is not pinned in pyproject.toml"
    return match.group(1)


def images(config: dict[str, Any]) -> dict[str, str]:
    """Image per role: the global one, head/worker overrides and node-type overrides."""
    docker = config.get("docker", {})
    out = {k: docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for name, node_type in config.get("available_node_types", {}).items():
        if node_type.get("docker", {}).get("worker_image"):
            out[name] = node_type["docker"]["worker_image"]
    return out


# ---- the cluster configs, through Ray's own validation --------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_accepts_the_config(name: str) -> None:
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] == name


@pytest.mark.parametrize("name", CLOUD)
def test_autoscaling_bounds_survive_fill_in(name: str) -> None:
    """Ray fills a missing per-type max_workers with the global cap and caps the sum: the
    bounds written in the file must be the ones Ray runs with."""
    written, config = raw(name), prepared(name)
    assert config["max_workers"] == written["max_workers"]
    workers = {k: v for k, v in written["available_node_types"].items()
               if k != written["head_node_type"]}
    for type_name, node_type in workers.items():
        assert {"min_workers", "max_workers"} <= set(node_type), f"{type_name}: bounds unstated"
        got = config["available_node_types"][type_name]
        assert (got["min_workers"], got["max_workers"]) == (
            node_type["min_workers"], node_type["max_workers"])
        assert 0 <= got["min_workers"] <= got["max_workers"]
    assert sum(t["max_workers"] for t in workers.values()) == written["max_workers"]
    assert any(t["max_workers"] > t["min_workers"] for t in workers.values()), "no autoscaling"


def test_local_bounds_survive_fill_in() -> None:
    """The on-prem config keeps every listed host: Ray caps max_workers at len(worker_ips)
    (an old config's 8 became 2), so the file states exactly that."""
    written, config = raw("local"), prepared("local")
    hosts = len(written["provider"]["worker_ips"])
    assert written["min_workers"] == written["max_workers"] == hosts
    assert config["max_workers"] == hosts
    (node_type,) = config["available_node_types"].values()
    assert (node_type["min_workers"], node_type["max_workers"]) == (hosts, hosts)


@pytest.mark.parametrize("name", CONFIGS)
def test_token_auth_on_every_ray_start(name: str) -> None:
    config = prepared(name)
    starts = ray_starts(config, "head_start_ray_commands") + ray_starts(
        config, "worker_start_ray_commands")
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"\bRAY_AUTH_MODE=token\b", command), command
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command, command
    assert TOKEN_FILE in config["file_mounts"], "the token file must reach every node"
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]


@pytest.mark.parametrize("path", [*CONFIGS.values(), DOCKERFILE, PIPELINE])
def test_no_shipped_file_turns_auth_off(path: Path) -> None:
    assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", path.read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_only_on_loopback(name: str) -> None:
    config = prepared(name)
    (head,) = ray_starts(config, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in json.dumps(config)  # Ray's defaults bind the dashboard there
    # AWS: Ray's group lets in SSH and the cluster's own nodes; extra rules come from here.
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        opens_8265 = rule.get("FromPort", -1) <= 8265 <= rule.get("ToPort", -1) or (
            rule.get("FromPort", -1) == -1)
        assert not (opens_8265 and rule.get("IpRanges")), rule


@pytest.mark.parametrize("name", CONFIGS)
def test_nothing_downloaded_when_nodes_start(name: str) -> None:
    """Left out, Ray's setup commands pip-install a nightly Ray from the internet."""
    for command in all_commands(prepared(name)):
        assert not re.search(r"pip install|https?://|\bwget\b|\bcurl\b", command), command


@pytest.mark.parametrize("name", CONFIGS)
def test_commands_are_valid_shell(name: str) -> None:
    for command in all_commands(prepared(name)):
        check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert check.returncode == 0, f"{command}\n{check.stderr}"


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_node_types_carry_the_roles(name: str) -> None:
    config = prepared(name)
    types = config["available_node_types"]
    owners = {role: [t for t, v in types.items() if role in v["resources"]] for role in ROLES}
    assert all(len(found) == 1 for found in owners.values()), owners
    assert owners["head_node"] == [config["head_node_type"]]
    gpu_type = types[owners["gpu_node"][0]]
    assert gpu_type["resources"]["GPU"] >= 1
    assert "--gpus all" in gpu_type["docker"]["worker_run_options"]
    assert types[owners["cpu_node"][0]]["resources"].get("GPU", 0) == 0


def test_local_hosts_get_the_roles_from_ray_start() -> None:
    """No node types on-prem: the head's and the workers' `ray start --resources` say it."""
    config = prepared("local")
    (head,) = ray_starts(config, "head_start_ray_commands")
    (worker,) = ray_starts(config, "worker_start_ray_commands")
    assert "--resources='" in head and role_json(head) == [{"head_node": 1}]
    assert role_json(worker) == [{"gpu_node": 1}, {"cpu_node": 1}]
    hosts = [config["provider"]["head_ip"], *config["provider"]["worker_ips"]]
    assert all(h.startswith("REPLACE_ME_") for h in hosts), "placeholders must stand out"


@pytest.mark.parametrize("gpu", [True, False])
def test_local_worker_role_follows_its_gpu(gpu: bool, tmp_path: Path) -> None:
    """The on-prem worker command itself, run with `ray` replaced by a recorder and an
    `nvidia-smi` that finds a GPU or not: a GPU host joins as gpu_node, any other as
    cpu_node, both with token auth on."""
    (worker,) = ray_starts(prepared("local"), "worker_start_ray_commands")
    bin_dir, record = tmp_path / "bin", tmp_path / "ray-args"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" "auth=$RAY_AUTH_MODE" > {record}\n')
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.1.2.3"}
    run = subprocess.run(["bash", "-c", worker], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    args = record.read_text().splitlines()
    role = {"gpu_node": 1} if gpu else {"cpu_node": 1}
    assert args[:2] == ["start", "--address=10.1.2.3:6379"]
    assert f"--resources={json.dumps(role)}" in args and args[-1] == "auth=token"


@pytest.mark.parametrize("name", CONFIGS)
def test_shared_storage_mounted(name: str) -> None:
    config = prepared(name)
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in config["docker"]["run_options"]
    assert any("mount" in c and SHARED_MOUNT in c for c in config["initialization_commands"])


# ---- the image --------------------------------------------------------------------------------


def dockerfile_tags() -> set[str]:
    return set(re.findall(r"-t (\S+)", DOCKERFILE.read_text()))


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", DOCKERFILE.read_text(), re.M)
    assert match, f"ARG {name} missing"
    return match.group(1)


def test_dockerfile_pins_match_pyproject() -> None:
    assert dockerfile_arg("TORCH_VERSION") == pin("torch")
    assert dockerfile_arg("TORCHVISION_VERSION") == pin("torchvision")
    version = project_version()
    assert dockerfile_arg("REIDSTREAM_VERSION") == version
    assert dockerfile_tags() == {f"reidstream/reidstream:{version}-cpu",
                                 f"reidstream/reidstream:{version}-cuda"}


def test_dockerfile_runs_offline() -> None:
    text = DOCKERFILE.read_text()
    for setting in ("YOLO_OFFLINE=1", "YOLO_AUTOINSTALL=False",
                    "REIDSTREAM_ASSETS=/opt/reidstream/assets", "RAY_AUTH_MODE=token"):
        assert setting in text, setting
    assert "COPY --from=assets . /opt/reidstream/assets/" in text
    assert "pip uninstall -y opencv-python" in text and '"opencv-python-headless<5"' in text
    assert "--build-context assets=../shared/assets" in text


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_name_the_built_image(name: str) -> None:
    named = images(prepared(name))
    assert named and set(named.values()) <= dockerfile_tags(), named
    for type_name, node_type in prepared(name)["available_node_types"].items():
        if node_type.get("resources", {}).get("GPU"):
            assert named[type_name].endswith("-cuda"), f"{type_name} needs the CUDA build"


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "runs/", "*.egg-info"} <= set(ignored)
    assert not {"reidstream", "reidstream/", "pyproject.toml"} & set(ignored)


# ---- the production pipeline config -----------------------------------------------------------


def test_pipeline_config_loads_and_names_real_things() -> None:
    from reidstream.assets import BUNDLED_WEIGHTS, Assets
    from reidstream.config import load_config

    cfg = load_config(PIPELINE)
    shipped = Assets.from_config(cfg.assets).asset(cfg.embed.checkpoint)
    assert shipped.parent == BUNDLED_WEIGHTS and shipped.is_file()
    assert "sasl_password" not in yaml.safe_load(PIPELINE.read_text())["kafka"]
    assert "REIDSTREAM_KAFKA_SASL_PASSWORD" in PIPELINE.read_text()
    assert cfg.linker.state_dir.startswith(SHARED_MOUNT + "/")
    assert cfg.train.storage_path.startswith(SHARED_MOUNT + "/")
    # Kafka clients run on the head and the CPU nodes: their files must be on every node.
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file"):
        path = getattr(cfg.kafka, key)
        assert not path or path.startswith(SHARED_MOUNT + "/"), f"kafka.{key}: {path}"
    pc = cfg.pipeline
    assert pc.detector_num_gpus > 0 and pc.embedder_num_gpus > 0
    assert set(pc.detector_resources) == set(pc.embedder_resources) == {"gpu_node"}
    assert set(pc.worker_resources) == set(cfg.gallery.actor_resources) == {"cpu_node"}
    assert set(pc.control_resources) == {"head_node"}


def pipeline_actor_asks(cfg: Any) -> list[dict[str, float]]:
    """Every actor the pipeline starts, embedders twice (a roll-out overlaps them), as the
    resources it asks Ray for."""
    from reidstream.gallery.shard import shard_options
    from reidstream.pipeline.placement import actor_options

    pc = cfg.pipeline
    kinds = [(pc.num_detectors, actor_options(cfg, "detector")),
             (2 * pc.num_embedders, actor_options(cfg, "embedder")),
             (pc.num_workers, actor_options(cfg, "worker")),
             (cfg.gallery.num_shards, shard_options(cfg.gallery)),
             (3, actor_options(cfg, "control"))]
    return [{"CPU": o["num_cpus"], "GPU": o["num_gpus"], **o.get("resources", {})}
            for count, o in kinds for _ in range(count)]


@pytest.mark.parametrize("name", CLOUD)
def test_pipeline_fits_the_cluster_at_its_minimum_size(name: str) -> None:
    """Every actor finds a node of the right type without waiting for the autoscaler:
    first-fit over the nodes the cluster starts with, largest asks first."""
    from reidstream.config import load_config
    from reidstream.pipeline.placement import check_placement

    cfg, config = load_config(PIPELINE), prepared(name)
    nodes = []
    for type_name, node_type in config["available_node_types"].items():
        count = 1 if type_name == config["head_node_type"] else node_type["min_workers"]
        nodes += [{k: float(v) for k, v in node_type["resources"].items()} for _ in range(count)]
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0.0) + value
    check_placement(cfg, totals)  # the pipeline's own start-up check
    asks = sorted(pipeline_actor_asks(cfg), key=lambda a: (-a["GPU"], -a["CPU"]))
    for ask in asks:
        node = next((n for n in nodes if all(n.get(k, 0.0) >= v - 1e-9 for k, v in ask.items()
                                             if v)), None)
        assert node is not None, f"no {name} node left for {ask}"
        for key, value in ask.items():
            node[key] = node.get(key, 0.0) - value


# ---- token auth on a real head, started as deploy/ray_cluster.local.yaml starts it ------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int) -> int:
    """First port of ``size`` consecutive free ports (Ray's worker ports)."""
    for base in range(31000, 60000, 997):
        try:
            held = []
            for port in range(base, base + size):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range for Ray's workers")


def local_head_command(ports: dict[str, int], temp_dir: str) -> str:
    """The on-prem config's `ray start --head` command, on free ports and in ``temp_dir`` (a
    second Ray on this machine must not meet the first), blocking so it can be stopped."""
    (command,) = ray_starts(raw("local"), "head_start_ray_commands")
    for flag, default in (("port", 6379), ("object-manager-port", 8076),
                          ("dashboard-port", 8265)):
        assert f"--{flag}={default}" in command, f"--{flag} moved: update this test"
        command = command.replace(f"--{flag}={default}", f"--{flag}={ports[flag]}")
    # The launcher writes the autoscaler's config; a head started by hand runs without it.
    command = re.sub(r"\s--autoscaling-config=\S+", "", command)
    extra = {"node-manager-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"}
    flags = " ".join(f"--{f}={ports[f]}" for f in sorted(extra))
    worker = ports["min-worker-port"]
    return (f"{command} {flags} --min-worker-port={worker} --max-worker-port={worker + 39}"
            f" --temp-dir={temp_dir} --num-cpus=1 --num-gpus=0"
            " --object-store-memory=100000000 --disable-usage-stats --block")


def stop_started_ray(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop exactly the Ray this test started: its process group, then anything left whose
    command line names its temp dir. Never `ray stop`, which stops every Ray of the machine."""
    import psutil

    mine: set[psutil.Process] = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        mine |= {root, *root.children(recursive=True)}

    def named() -> set[psutil.Process]:
        found = set()
        for p in psutil.process_iter(["cmdline"]):
            if temp_dir in " ".join(p.info["cmdline"] or []):
                found.add(p)
        return found

    mine |= named()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    for p in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=20)
    for p in [*alive, *named()]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=10)


@contextlib.contextmanager
def local_head(token: str | None) -> Iterator[tuple[subprocess.Popen, dict[str, Any]]]:
    """A Ray head started by the local config's own command, in a throwaway temp dir and
    HOME whose ~/.ray/auth_token (where `ray up` mounts it) holds ``token``, or is missing.
    Auth comes only from the command: the test environment's RAY_AUTH_* are removed first.
    Stopped, with everything it started, on the way out."""
    temp_dir = tempfile.mkdtemp(prefix="rs-auth-", dir="/tmp")  # short: Ray's socket paths
    home = Path(temp_dir) / "home"
    (home / ".ray").mkdir(parents=True)
    if token is not None:
        (home / ".ray" / "auth_token").write_text(token)
    names = ["port", "object-manager-port", "dashboard-port", "node-manager-port",
             "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    ports["min-worker-port"] = free_port_range(40)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # no drain wait (30 s) at teardown
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(["bash", "-c", local_head_command(ports, temp_dir)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, {"url": f"http://127.0.0.1:{ports['dashboard-port']}", "env": env,
                     "temp_dir": temp_dir}
    finally:
        stop_started_ray(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def tail(temp_dir: str) -> str:
    path = Path(temp_dir) / "ray-start.log"
    return path.read_text()[-3000:] if path.is_file() else ""


def test_head_without_the_token_file_does_not_start() -> None:
    """A node whose token file did not arrive fails, rather than starting unprotected."""
    with local_head(token=None) as (proc, head):
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ray start ran without its token file:\n{tail(head['temp_dir'])}")
        assert proc.returncode != 0
        assert "RAY_AUTH_TOKEN_PATH is set but file cannot be opened" in tail(head["temp_dir"])


@pytest.fixture
def token_head() -> Iterator[dict[str, Any]]:
    """The local config's head, with a token, once its job API answers the token holder."""
    import requests

    token = secrets.token_hex(32)
    with local_head(token) as (proc, head):
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{tail(head['temp_dir'])}")
            if time.monotonic() > deadline:
                pytest.fail(f"the job API did not come up in 180 s:\n{tail(head['temp_dir'])}")
            try:
                r = requests.get(f"{head['url']}/api/jobs/", timeout=5,
                                 headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield {**head, "token": token}


@pytest.mark.slow
def test_job_submission_needs_the_token(token_head: dict[str, Any], tmp_path: Path) -> None:
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url, token = token_head["url"], token_head["token"]
    mode = requests.get(f"{url}/api/authentication_mode", timeout=10).json()
    assert mode == {"authentication_mode": "token"}

    # Without the token, or with another one, the job API refuses.
    job = {"entrypoint": "python -c 'print(1)'"}
    assert requests.post(f"{url}/api/jobs/", json=job, timeout=10).status_code == 401
    wrong = {"Authorization": f"Bearer {secrets.token_hex(32)}"}
    assert requests.post(f"{url}/api/jobs/", json=job, headers=wrong,
                         timeout=10).status_code == 403
    with pytest.raises(AuthenticationError, match="Authentication (required|failed)"):
        JobSubmissionClient(url)
    cli_env = {k: v for k, v in token_head["env"].items() if k not in ("HOME",)}
    cli_env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    entrypoint = ("python -c \"import ray; ray.init(); "
                  "print('head_node=%s' % ray.cluster_resources().get('head_node'))\"")
    refused = subprocess.run(
        ["ray", "job", "submit", "--address", url, "--", "bash", "-c", entrypoint],
        env=cli_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "Authentication required" in refused.stdout + refused.stderr

    # With it, as docs/cluster.md tells operators: RAY_AUTH_MODE=token and the token's file.
    token_file = tmp_path / "token"
    token_file.write_text(token)
    accepted = subprocess.run(
        ["ray", "job", "submit", "--address", url, "--", "bash", "-c", entrypoint],
        env={**cli_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)},
        capture_output=True, text=True, timeout=240)
    out = accepted.stdout + accepted.stderr
    assert accepted.returncode == 0, out[-3000:]
    # The job's driver joined the token-protected cluster; the head has its role resource.
    assert "head_node=1.0" in out and "succeeded" in out, out[-3000:]

    # The Python client with the token in a header sees the job.
    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    assert [j.status.value for j in client.list_jobs()] == ["SUCCEEDED"]
