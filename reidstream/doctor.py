"""``reidstream doctor``: what this node has, and which pipeline roles it can take.

Run on a node that Ray leaves idle (or runs slowly) to see why at a glance: no CUDA, a torch
or FAISS build without kernels for this GPU, a runtime missing, the broker out of reach or
refusing our credentials, an asset absent or corrupt. One line per finding, then a verdict per
role. Exit status 1 when a role this node must take cannot run (``--gpu``: the detector and
embedder must run on a GPU here), else 0.

GPU kernels: a CUDA library carries machine code (SASS) for some GPU generations and maybe
PTX that the driver can compile for newer ones. SASS built for sm_XY runs on sm_XZ with
Z >= Y (same major); PTX for sm_XY runs on any GPU of compute capability >= X.Y. A GPU that
neither covers gets "no kernel image is available" at the first search, so FAISS's own
libraries are read (their ``.nv_fatbin`` section) rather than trusting the wheel's name.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.metadata
import json
import logging
import mmap
import platform
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
FATBIN_MAGIC = 0xBA55ED50
FATBIN_PTX, FATBIN_SASS = 1, 2
GPU_EXTRA_HINT = "pip install 'reidstream[gpu]' (faiss-gpu: kernels sm_70 to sm_90, PTX sm_90)"


# ---- GPU kernels: what a library carries, what this machine's GPUs need -----------------------


@dataclass(frozen=True)
class Kernels:
    """GPU code a shared library carries: SASS archs (e.g. 80 for sm_80) and PTX archs."""

    sass: frozenset[int] = frozenset()
    ptx: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.sass or self.ptx)

    def covers(self, capability: tuple[int, int]) -> bool:
        """Whether a GPU of compute capability ``(major, minor)`` can run these kernels."""
        arch = capability[0] * 10 + capability[1]
        if any(s // 10 == capability[0] and s <= arch for s in self.sass):
            return True
        return any(p <= arch for p in self.ptx)

    def describe(self) -> str:
        sass = ", ".join(f"sm_{a}" for a in sorted(self.sass)) or "none"
        ptx = ", ".join(f"sm_{a}" for a in sorted(self.ptx)) or "none"
        return f"SASS {sass}; PTX {ptx}"


def fatbin_kernels(path: str | Path) -> Kernels:
    """The SASS and PTX architectures in an ELF shared library's ``.nv_fatbin`` section.

    Only headers are read (through mmap), so a 200 MB library takes milliseconds. A file
    without the section (a CPU build) gives empty :class:`Kernels`.
    """
    sass: set[int] = set()
    ptx: set[int] = set()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        section = _elf_section(mm, b".nv_fatbin")
        if section is None:
            return Kernels()
        pos, end = section
        while True:
            pos = mm.find(struct.pack("<I", FATBIN_MAGIC), pos, end)
            if pos < 0 or pos + 16 > end:
                break
            _, _, header_size, size = struct.unpack_from("<IHHQ", mm, pos)
            entry, stop = pos + header_size, min(end, pos + header_size + size)
            while entry + 32 <= stop:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", mm, entry)
                arch = struct.unpack_from("<I", mm, entry + 28)[0]
                if kind == FATBIN_SASS:
                    sass.add(arch)
                elif kind == FATBIN_PTX:
                    ptx.add(arch)
                if entry_header <= 0:
                    break
                entry += entry_header + payload
            pos = max(stop, pos + 16)
    return Kernels(frozenset(sass), frozenset(ptx))


def _elf_section(mm: mmap.mmap, name: bytes) -> tuple[int, int] | None:
    """(start, end) file offsets of section ``name`` in a little-endian ELF64 file."""
    if mm[:4] != b"\x7fELF" or mm[4] != 2 or mm[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", mm, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", mm, 0x3A)
    if not shoff or shstrndx >= shnum:
        return None
    headers = [struct.unpack_from("<IIQQQQ", mm, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in headers:
        end = mm.find(b"\0", strtab + sh_name)
        if mm[strtab + sh_name:end] == name:
            return offset, offset + size
    return None


def loaded_libraries(fragment: str) -> list[Path]:
    """Shared libraries mapped into this process whose file name contains ``fragment``."""
    found: list[Path] = []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return found
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and fragment in Path(parts[5]).name and ".so" in parts[5]:
            path = Path(parts[5].strip())
            if path not in found and path.is_file():
                found.append(path)
    return found


@functools.cache
def faiss_kernels() -> Kernels:
    """The GPU kernels of the FAISS this process imported (empty for a CPU build)."""
    import faiss  # noqa: F401  (maps its libraries)

    sass: set[int] = set()
    ptx: set[int] = set()
    for lib in loaded_libraries("faiss"):
        try:
            k = fatbin_kernels(lib)
        except (OSError, ValueError, struct.error):
            continue
        sass |= k.sass
        ptx |= k.ptx
    return Kernels(frozenset(sass), frozenset(ptx))


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


@functools.cache
def cuda_gpus() -> tuple[tuple[Gpu, ...], str]:
    """The GPUs the CUDA driver shows this process, without torch: ``(gpus, why_none)``.

    Through the driver library itself (libcuda), so the answer does not depend on which CUDA
    version torch or FAISS were built for; honours CUDA_VISIBLE_DEVICES like they do.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return (), "no NVIDIA driver (libcuda.so.1 not found)"
    if cuda.cuInit(0) != 0:
        return (), "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return (), "the NVIDIA driver shows no GPU"
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        mem = ctypes.c_size_t()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
        cuda.cuDeviceGetName(name, 256, dev)
        cuda.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        gpus.append(Gpu(i, name.value.decode(errors="replace"), (major.value, minor.value),
                        mem.value / 2**30))
    return tuple(gpus), ""


def faiss_gpu_gap() -> str:
    """Why this FAISS cannot search on this machine's GPUs, or "" (it can, or we cannot tell).

    For ``gallery.use_gpu``: a GPU build that lacks kernels for the GPU would fail at the first
    search ("no kernel image is available"), so it is better not to take the GPU at all.
    """
    gpus, _ = cuda_gpus()
    kernels = faiss_kernels()
    if not gpus or not kernels:
        return ""
    missing = [g for g in gpus if not kernels.covers(g.capability)]
    if not missing:
        return ""
    names = ", ".join(f"GPU {g.index} {g.name} ({g.sm})" for g in missing)
    return (f"this FAISS build has no kernels for {names} ({kernels.describe()}); "
            f"{GPU_EXTRA_HINT}")


# ---- the report -------------------------------------------------------------------------------


@dataclass
class Finding:
    topic: str
    status: str
    detail: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    roles: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def add(self, topic: str, status: str, detail: str) -> None:
        self.findings.append(Finding(topic, status, detail))

    def role(self, name: str, ok: bool, why: str) -> None:
        self.roles[name] = (ok, why)


def add_arguments_run_doctor(p: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments
    from reidstream.ingest.cli import add_kafka_arguments

    p.add_argument("--address", default="",
                   help="join this Ray cluster (auto, HOST:PORT, ray://...) and show its "
                        "resources; default: do not join")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="seconds to wait for the broker (default 3)")
    p.add_argument("--gpu", action="store_true",
                   help="this is a GPU node: fail unless the detector and embedder can run on "
                        "its GPU")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_kafka_arguments(p)
    add_config_arguments(p)


def run_doctor(args: argparse.Namespace) -> int:
    from reidstream.cli import load_cli_config
    from reidstream.ingest.cli import apply_kafka_arguments

    cfg = load_cli_config(args)
    apply_kafka_arguments(cfg.kafka, args)
    report = Report()
    facts: dict[str, Any] = {}
    for check in (_python, _torch, _faiss, _runtimes, _ray, _broker, _assets):
        try:
            check(report, facts, cfg, args)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            report.add(check.__name__.strip("_"), FAIL, f"check crashed: {_masked(exc)}")
    _verdicts(report, facts)
    required = ["detector", "embedder", "camera worker", "gallery shard"]
    if args.gpu:
        required += ["detector on GPU", "embedder on GPU"]
    if args.address:
        report.role("ray cluster", bool(facts.get("ray")), f"joins {args.address}" if
                    facts.get("ray") else "cannot join (see ray above)")
        required.append("ray cluster")
    failed = [r for r in required if not report.roles.get(r, (False, ""))[0]]
    if args.json:
        print(json.dumps({
            "findings": [asdict(f) for f in report.findings],
            "roles": {k: {"ok": ok, "why": why} for k, (ok, why) in report.roles.items()},
            "required_failed": failed,
        }, indent=2))
    else:
        _print(report, failed)
    return 1 if failed else 0


def _print(report: Report, failed: list[str]) -> None:
    width = max(len(f.topic) for f in report.findings)
    for f in report.findings:
        print(f"{f.topic:<{width}}  {f.status:<4}  {f.detail}")
    print("\nroles on this node:")
    width = max(len(r) for r in report.roles)
    for name, (ok, why) in report.roles.items():
        print(f"  {name:<{width}}  {'yes' if ok else 'NO '}  {why}")
    if failed:
        print(f"\nnot ready: {', '.join(failed)}")
    else:
        print("\nready")


def _masked(exc: BaseException | str) -> str:
    from reidstream.ingest.secrets import mask_secrets

    return mask_secrets(str(exc))


# ---- the checks -------------------------------------------------------------------------------


def _python(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    report.add("python", INFO, f"{platform.python_version()} ({sys.executable})")
    from reidstream.device import cpu_model
    from reidstream.inference.backends import resolve_precision

    # What the detector computes in on this CPU decides how many cameras it keeps up with.
    report.add("cpu", INFO, f"{cpu_model()}; detection.precision "
               f"{cfg.detection.precision} -> {resolve_precision(cfg.detection.precision, 'cpu')}"
               f" on the CPU; embed.precision {cfg.embed.precision}"
               + (" (f32 or int8, the faster, timed when an embedder starts)"
                  if cfg.embed.precision == "auto" else ""))


def _torch(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    gpus, why_none = cuda_gpus()
    facts["gpus"] = gpus
    if gpus:
        for g in gpus:
            report.add("gpu", INFO, f"{g.index}: {g.name}, {g.sm}, {g.memory_gib:.0f} GiB")
    else:
        report.add("gpu", INFO, why_none)
    torch = _imported(report, facts, "torch")
    if torch is None:
        return
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    report.add("torch", OK, f"{torch.__version__} ({built})")
    facts["torch_gpu"] = ""
    if not gpus:
        facts["torch_gpu"] = why_none
        return
    if not torch.cuda.is_available():
        why = ("torch is a CPU-only build" if not torch.version.cuda else
               f"torch's CUDA {torch.version.cuda} cannot use this driver (too old?)")
        report.add("torch cuda", WARN, why)
        facts["torch_gpu"] = why
        return
    archs = torch.cuda.get_arch_list()
    kernels = Kernels(
        frozenset(int(a[3:]) for a in archs if a.startswith("sm_") and a[3:].isdigit()),
        frozenset(int(a[8:]) for a in archs if a.startswith("compute_") and a[8:].isdigit()),
    )
    missing = [g for g in gpus if not kernels.covers(g.capability)]
    if missing:
        why = (f"torch has no kernels for {', '.join(g.sm for g in missing)} "
               f"({kernels.describe()})")
        report.add("torch cuda", WARN, why)
        facts["torch_gpu"] = why
    else:
        report.add("torch cuda", OK, f"{torch.cuda.device_count()} device(s), kernels "
                                     f"{', '.join(archs)}")


def _faiss(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    if not getattr(args, "verbose", False):
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # 6 lines of CPU flags
    dists = sorted({d.metadata["Name"] for d in importlib.metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("faiss")})
    if len(dists) > 1:
        report.add("faiss", WARN, f"several FAISS wheels installed ({', '.join(dists)}): they "
                                  "overwrite each other's files; keep one (pip uninstall)")
    try:
        import faiss
    except ImportError as exc:
        report.add("faiss", FAIL, f"not importable ({exc}): pip install 'reidstream[cpu]' or "
                                  "'reidstream[gpu]'")
        facts["faiss"] = False
        return
    facts["faiss"] = True
    gpu_build = hasattr(faiss, "StandardGpuResources")
    wheel = ", ".join(dists) or "source build"
    report.add("faiss", OK, f"{faiss.__version__} ({wheel}), "
                            f"{'GPU' if gpu_build else 'CPU-only'} build")
    facts["faiss_gpu"] = ""
    gpus = facts.get("gpus") or ()
    if not gpu_build:
        facts["faiss_gpu"] = "FAISS is a CPU-only build"
        if gpus:
            report.add("faiss gpu", WARN, f"this node has a GPU but FAISS is CPU-only: gallery "
                                          f"shards search on CPU; {GPU_EXTRA_HINT}")
        return
    seen = faiss.get_num_gpus()
    kernels = faiss_kernels()
    detail = f"sees {seen} GPU(s); kernels: {kernels.describe() if kernels else 'cannot tell'}"
    gap = faiss_gpu_gap()
    if gap:
        report.add("faiss gpu", WARN, f"{detail}; {gap}; gallery.use_gpu=auto searches on CPU")
        facts["faiss_gpu"] = gap
    elif seen == 0:
        report.add("faiss gpu", INFO, f"{detail}")
        facts["faiss_gpu"] = "FAISS sees no GPU"
    else:
        failure = _faiss_gpu_search(faiss)
        if failure:
            report.add("faiss gpu", WARN, f"{detail}; a search on GPU 0 failed: {failure}")
            facts["faiss_gpu"] = f"a FAISS GPU search failed ({failure[:80]})"
        else:
            report.add("faiss gpu", OK, f"{detail}; a search on GPU 0 matches the CPU's")


def _faiss_gpu_search(faiss: Any) -> str:
    """"" if a tiny exact search on GPU 0 gives the CPU's answer, else what went wrong: the
    proof that kernels load ("no kernel image is available" shows here, not at import)."""
    import numpy as np

    try:
        rng = np.random.default_rng(0)
        base = rng.standard_normal((64, 16)).astype(np.float32)
        cpu = faiss.IndexFlatIP(16)
        cpu.add(base)
        res = faiss.StandardGpuResources()
        res.setTempMemory(16 << 20)
        gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        want, got = cpu.search(base[:8], 4)[1], gpu.search(base[:8], 4)[1]
        return "" if (want == got).all() else "results differ from the CPU index"
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError with CUDA's message
        return str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else repr(exc)


def _runtimes(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    from reidstream.inference.backends import _ort_providers, installed_backends

    try:
        version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    providers = _ort_providers()
    if providers:
        report.add("onnxruntime", OK, f"{version}: {', '.join(providers)}")
    else:
        report.add("onnxruntime", INFO, "not installed")
    try:
        import openvino as ov

        devices = ov.Core().available_devices
        report.add("openvino", OK, f"{ov.__version__.split('-')[0]}: {', '.join(devices)}")
    except ImportError:
        report.add("openvino", INFO, "not installed")
    device = "cuda" if facts.get("gpus") and not facts.get("torch_gpu") else "cpu"
    report.add("backends", INFO, f"{device}: {', '.join(installed_backends(device))} "
                                 f"(detection.backend={cfg.detection.backend}, "
                                 f"embed.backend={cfg.embed.backend})")


def _imported(report: Report, facts: dict, name: str) -> Any:
    """The module ``name``, or None with a failed check saying why (``facts[name]``: which)."""
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        report.add(name, FAIL, f"not importable: {exc}")
        module = None
    facts[name] = module is not None
    return module


def _ray(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    ray = _imported(report, facts, "ray")
    if ray is None:
        return
    if not args.address:
        report.add("ray", OK, f"{ray.__version__}; no cluster joined (--address to check one)")
        return
    import os

    unreachable = _ray_unreachable(args.address, max(1.0, args.timeout))
    if unreachable:  # ray.init would retry for minutes
        report.add("ray", FAIL, f"{ray.__version__}; cannot join {args.address}: {unreachable}")
        facts["ray"] = False
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        report.add("ray", FAIL, f"{ray.__version__}; cannot join {args.address}: {exc}")
        facts["ray"] = False
        return
    try:
        here = ray.util.get_node_ip_address()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total, free = ray.cluster_resources(), ray.available_resources()

        def fmt(res: dict) -> str:
            keys = ["CPU", "GPU"] + sorted(k for k in res if k not in ("CPU", "GPU")
                                           and not k.startswith(("node:", "memory", "object_",
                                                                 "accelerator")))
            return ", ".join(f"{k} {res[k]:g}" for k in keys if k in res)

        report.add("ray", OK, f"{ray.__version__}; joined {args.address}: {len(nodes)} node(s), "
                              f"total {fmt(total)}; free {fmt(free)}")
        mine = [n for n in nodes if n.get("NodeManagerAddress") == here]
        if mine:
            report.add("ray node", INFO, f"this node ({here}) offers {fmt(mine[0]['Resources'])}")
        else:
            report.add("ray node", WARN, f"this node ({here}) is not one of the cluster's nodes "
                                         "(`ray start --address ...` here to add it)")
    finally:
        ray.shutdown()


def _ray_unreachable(address: str, timeout_s: float) -> str:
    """Why nothing listens at a Ray address (``auto``, ``[ray://]HOST:PORT``), or ""."""
    import socket

    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError as exc:
            return str(exc).split(". ")[0]
    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return f"expected auto or [ray://]HOST:PORT, got {address!r}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return ""
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


def _broker(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    from reidstream.config import ConfigError
    from reidstream.ingest.kafka_clients import kafka_client_kwargs, quiet_kafka_logging

    quiet_kafka_logging(getattr(args, "verbose", False))
    k = cfg.kafka
    where = f"{k.bootstrap_servers} ({k.security_protocol}"
    where += f", {k.sasl_mechanism})" if k.sasl_mechanism else ")"
    try:
        kw = kafka_client_kwargs(k)
    except ConfigError as exc:
        report.add("broker", FAIL, f"{where}: {_masked(exc)}")
        facts["broker"] = False
        return
    from kafka import KafkaAdminClient

    ms = int(max(0.1, args.timeout) * 1000)
    kw.update(bootstrap_timeout_ms=ms, request_timeout_ms=max(ms, 1000),
              reconnect_backoff_max_ms=min(1000, ms), client_id="reidstream-doctor")
    started = time.monotonic()
    try:
        admin = KafkaAdminClient(**kw)
    except Exception as exc:  # noqa: BLE001 - kafka raises its own types; say what happened
        report.add("broker", FAIL, f"{where}: {_masked(exc)} (waited {args.timeout:g} s)")
        facts["broker"] = False
        return
    try:
        elapsed = (time.monotonic() - started) * 1000
        facts["broker"] = True
        report.add("broker", OK, f"{where}: answered in {elapsed:.0f} ms")
        try:
            topics = set(admin.list_topics())
        except Exception as exc:  # noqa: BLE001
            report.add("topics", WARN, f"cannot list topics: {_masked(exc)}")
            return
        wanted = [k.frames_topic, k.events_topic, k.tracks_topic]
        missing = [t for t in wanted if t not in topics]
        if missing:
            report.add("topics", INFO, f"missing {', '.join(missing)} (`reidstream run` or "
                                       "`deploy up` creates them)")
        else:
            report.add("topics", OK, ", ".join(wanted))
    finally:
        admin.close()


def _assets(report: Report, facts: dict, cfg: Any, args: Any) -> None:
    from reidstream.assets import KNOWN_SHA256, AssetError, Assets, sha256_of

    assets = Assets.from_config(cfg.assets)
    wanted = [("detector", cfg.detection.model, "detection.model")]
    if cfg.embed.checkpoint:
        wanted.append(("embedder", cfg.embed.checkpoint, "embed.checkpoint"))
    elif cfg.model.pretrained:
        wanted.append(("embedder", cfg.model.pretrained, "model.pretrained"))
    wanted.append(("demo", "vtest.avi", "the demo video"))
    for role, name, key in wanted:
        try:
            path = assets.asset(name)  # sha256-checked when known and assets.verify_sha256
        except AssetError as exc:
            report.add("asset", WARN if role == "demo" else FAIL, f"{key}: {exc}")
            facts[f"asset_{role}"] = str(exc)
            continue
        facts[f"asset_{role}"] = ""
        size = path.stat().st_size / 2**20
        detail = f"{key}: {path} ({size:.1f} MiB"
        if cfg.assets.verify_sha256:
            digest = sha256_of(path)
            known = KNOWN_SHA256.get(path.name)
            detail += f", sha256 {digest[:16]}…{', verified' if known else ', no known sum'}"
        report.add("asset", OK, detail + ")")


def _verdicts(report: Report, facts: dict) -> None:
    torch_ok = bool(facts.get("torch"))
    gpus = facts.get("gpus") or ()
    for role in ("detector", "embedder"):
        asset = facts.get(f"asset_{role}")
        if not torch_ok:
            report.role(role, False, "torch is missing")
        elif asset:
            report.role(role, False, f"its weights are missing or corrupt ({asset[:80]})")
        else:
            report.role(role, True, "on CPU" + (" or GPU" if gpus and not facts.get("torch_gpu")
                                                 else ""))
    for role in ("detector", "embedder"):
        base_ok = report.roles[role][0]
        why = facts.get("torch_gpu") or ("" if gpus else "no GPU")
        if not base_ok:
            report.role(f"{role} on GPU", False, report.roles[role][1])
        elif why:
            report.role(f"{role} on GPU", False, why)
        else:
            report.role(f"{role} on GPU", True, ", ".join(f"{g.name} ({g.sm})" for g in gpus))
    if facts.get("broker"):
        report.role("camera worker", True, "broker answers")
    else:
        report.role("camera worker", False, "the broker does not answer (see broker above)")
    if not facts.get("faiss"):
        report.role("gallery shard", False, "FAISS is missing")
    elif facts.get("faiss_gpu") or not gpus:
        report.role("gallery shard", True, "FAISS on CPU" + (
            f" ({facts['faiss_gpu']})" if gpus and facts.get("faiss_gpu") else ""))
    else:
        report.role("gallery shard", True, "FAISS on GPU")


def describe_kernels(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{path: "SASS ...; PTX ..."}``: for checking a wheel's libraries before installing it
    (``python -c 'from reidstream.doctor import describe_kernels as d; print(d([...]))'``)."""
    return {str(p): fatbin_kernels(p).describe() for p in paths}
