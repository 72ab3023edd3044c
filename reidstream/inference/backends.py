"""Runtimes for exported (ONNX) models: ONNX Runtime and OpenVINO, one small interface.

A :class:`Session` takes named numpy inputs and returns the first output. Which runtimes a
machine has is found at run time (``installed_backends``); ``auto`` does not guess from a
table but times each installed candidate on the caller's own input and keeps the fastest
(:func:`pick_fastest`), because the winner differs between CPUs (AMD vs Intel, AVX-512 or not).

Threads: a session uses the caller's ``torch.get_num_threads()`` unless told otherwise, so the
pipeline's one-thread-per-actor budget holds for every backend. OpenVINO never pins threads to
cores: two actors pinned to the same core would halve each other.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.device import cpu_has_bf16

log = logging.getLogger(__name__)

TORCH = "torch"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
TENSORRT = "tensorrt"
BACKENDS = (TORCH, ONNXRUNTIME, OPENVINO, TENSORRT)
# fp16: TensorRT (and OpenVINO on CPUs with AMX-FP16); int8: a statically quantised graph
# (``quantize.py``) in ONNX Runtime. ``auto`` is resolved by :func:`resolve_precision`.
PRECISIONS = ("f32", "bf16", "fp16", "int8")


def resolve_precision(requested: str, device: str, native_bf16: bool | None = None) -> str:
    """``auto``: what is fast here without a visible loss. fp16 on CUDA; on a CPU bf16 where
    it is native (AVX512-BF16 / AMX; ``native_bf16`` None: read this CPU's flags), else int8
    (AVX2 only: bf16 would be emulated, slower than f32). Anything else is checked and
    returned as asked."""
    if requested == "auto":
        if device == "cuda":
            return "fp16"
        native = cpu_has_bf16() if native_bf16 is None else native_bf16
        return "bf16" if native else "int8"
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {requested!r}")
    return requested


# Runtimes that score a statically quantised (QDQ) graph right: OpenVINO reads the int8
# detector but lost a third of its boxes on it (BENCHMARKS.md, "A CPU without bf16").
INT8_BACKENDS = (ONNXRUNTIME,)


def settle_precision(backend: str, precision: str, device: str, key: str) -> tuple[str, str]:
    """(backend, precision) once the rules between them are applied: ``precision`` resolved
    (:func:`resolve_precision`), and int8 only where it runs right (``INT8_BACKENDS``). Under
    ``auto`` int8 takes ONNX Runtime (f32 where it is not installed); a runtime named in
    ``key`` with int8 named too is an error, with ``auto`` precision it gets its best float
    (f32: a CPU that resolves to int8 has no native bf16). torch runs its own float model."""
    check_backend(backend, device)
    resolved = resolve_precision(precision, device)
    if resolved != "int8" or backend in INT8_BACKENDS:
        return backend, resolved
    if backend == TORCH:
        return backend, "f32"
    if backend == "auto":
        installed = [b for b in INT8_BACKENDS if b in installed_backends(device)]
        return (installed[0], "int8") if installed else (backend, "f32")
    if precision != "auto":
        raise ValueError(f"precision int8 runs in {', '.join(INT8_BACKENDS)}, not {key}={backend}")
    return backend, "f32"


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but this machine cannot run it."""


def _ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def installed_backends(device: str) -> list[str]:
    """Backends that can run here on ``device`` (``cpu`` or ``cuda``), fastest-first guess."""
    found = []
    providers = _ort_providers()
    if device == "cuda":
        if "TensorrtExecutionProvider" in providers:
            found.append(TENSORRT)
        if "CUDAExecutionProvider" in providers:
            found.append(ONNXRUNTIME)
    else:
        if importlib.util.find_spec("openvino") is not None:
            found.append(OPENVINO)
        if "CPUExecutionProvider" in providers:
            found.append(ONNXRUNTIME)
    found.append(TORCH)
    return found


def check_backend(name: str, device: str) -> None:
    """Clear error for a backend this machine lacks (``auto`` always passes)."""
    if name == "auto":
        return
    if name not in BACKENDS:
        raise ValueError(f"backend must be auto or one of {BACKENDS}, got {name!r}")
    have = installed_backends(device)
    if name not in have:
        hint = {
            ONNXRUNTIME: "pip install onnxruntime (onnxruntime-gpu for CUDA)",
            OPENVINO: "pip install openvino (CPU only)",
            TENSORRT: "onnxruntime-gpu built with TensorRT, and TensorRT itself",
        }.get(name, "")
        raise BackendUnavailable(
            f"backend {name!r} cannot run on {device} here (installed: {', '.join(have)}); "
            f"{hint}"
        )


class Session:
    """One exported model in one runtime: ``run({name: array}) -> first output``."""

    def __init__(
        self,
        path: str | Path,
        backend: str,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        import torch

        if backend == TORCH or backend not in BACKENDS:
            raise ValueError(f"a Session runs exported models: onnxruntime|openvino|tensorrt, "
                             f"not {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and (backend not in INT8_BACKENDS or device != "cpu"):
            raise ValueError(f"int8 runs in onnxruntime on the CPU (a quantised graph), "
                             f"not in {backend} on {device}")
        check_backend(backend, device)
        self.path = Path(path)
        self.backend = backend
        self.device = device
        # What the runtime really computes in: ONNX Runtime's CPU and CUDA providers run f32
        # whatever is asked (int8: the graph itself is quantised); TensorRT takes a non-f32
        # request as fp16; OpenVINO computes bf16 only where the CPU has it.
        if backend == OPENVINO:
            self.precision = "f32" if precision == "bf16" and not cpu_has_bf16() else precision
        elif precision == "int8":
            self.precision = "int8"
        elif backend == TENSORRT and precision != "f32":
            self.precision = "fp16"
        else:
            self.precision = "f32"
        threads = threads or torch.get_num_threads()
        if backend == OPENVINO:
            self._run, self.input_names = _openvino(self.path, threads, precision)
        else:
            self._run, self.input_names = _onnxruntime(self.path, backend, device, threads,
                                                       precision)

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # A graph drops inputs it never reads (a model without camera side information).
        feed = {k: v for k, v in inputs.items() if k in self.input_names}
        if not feed:
            raise ValueError(f"{self.path.name} takes {self.input_names}, got {list(inputs)}")
        return self._run(feed)


def _onnxruntime(path: Path, backend: str, device: str, threads: int, precision: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device == "cuda":
        providers: list[Any] = ["CUDAExecutionProvider"]
        if backend == TENSORRT:
            trt = {"trt_fp16_enable": precision != "f32", "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(path.parent / "trt-cache")}
            providers.insert(0, ("TensorrtExecutionProvider", trt))
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feed)[0]

    return run, names


@functools.cache
def _openvino_core():
    """One OpenVINO Core per process, as OpenVINO asks: each Core owns plugins and thread
    pools, and many of them beside torch's in one process is asking for trouble."""
    import openvino as ov

    return ov.Core()


def _openvino(path: Path, threads: int, precision: str):
    core = _openvino_core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        # f32 keeps parity with PyTorch; bf16 (native on AVX512-BF16 / AMX CPUs) is faster.
        "INFERENCE_PRECISION_HINT": {"fp16": "f16"}.get(precision, precision),
    }
    compiled = core.compile_model(str(path), "CPU", config)
    # A port has several tensor names (an input may also name the cast after it): keep all.
    names = [name for port in compiled.inputs for name in port.get_names()]
    request = compiled.create_infer_request()

    def run(feed: dict[str, np.ndarray], _keep=compiled) -> np.ndarray:
        # ``_keep``: a request outlives its compiled model only as an empty shell (it then
        # returns zero rows), so the closure holds the model.
        return np.array(request.infer(feed)[0], copy=True)

    return run, names


def open_backend(
    requested: str,
    device: str,
    inference: Any,
    export: Callable[[Path], Path],
    runner: Callable[[str, Path], Any],
    trial: Callable[[Any], Any],
    key: str,
    what: str,
) -> tuple[str, Any]:
    """The backend that serves a model and what runs it (None: the torch model itself).

    ``export(cache_dir)`` writes (or finds) the ONNX file; ``runner(name, path)`` wraps a
    session of backend ``name``; ``trial(runner or None)`` is one representative call, timed
    for ``auto``. A model that does not export runs in torch under ``auto`` (with a warning)
    and is a clear error when ``requested`` names an exported backend. ``inference`` (the
    ``InferenceConfig``; None: the defaults) is only read when an export is needed."""
    from reidstream.inference.export import cache_dir

    check_backend(requested, device)
    names = installed_backends(device) if requested == "auto" else [requested]
    if names == [TORCH]:
        return TORCH, None
    if inference is None:
        from reidstream.config import load_config

        inference = load_config().inference
    try:
        path = export(cache_dir(inference.cache_dir))
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:300]}"
        if requested != "auto":
            raise RuntimeError(f"{key}={requested}: {what} does not export to ONNX ({detail}); "
                               f"use {key}=torch") from exc
        log.warning("%s does not export to ONNX (%s); running it in torch", what, detail)
        return TORCH, None
    runners = {name: runner(name, path) for name in names if name != TORCH}
    if requested == "auto":
        trials = {name: functools.partial(trial, r) for name, r in runners.items()}
        trials[TORCH] = functools.partial(trial, None)
        requested = pick_fastest(trials, inference.auto_repeats)
    return requested, runners.get(requested)


def pick_fastest(candidates: Mapping[str, Callable[[], Any]], repeats: int = 3) -> str:
    """The name whose call is fastest (best of ``repeats`` after a warm-up): ``auto``."""
    if not candidates:
        raise ValueError("pick_fastest needs at least one candidate")
    times = {}
    for name, call in candidates.items():
        try:
            call()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - start)
            times[name] = best
        except Exception as exc:  # a runtime that cannot take this model is not a candidate
            log.warning("backend %s failed its trial run, not used: %s", name, exc)
    if not times:
        raise RuntimeError("no backend could run the model; see the warnings above")
    choice = min(times, key=times.__getitem__)
    ranked = sorted(times.items(), key=lambda kv: kv[1])
    log.info("auto backend: %s (%s)", choice, ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in ranked))
    return choice
