"""Device choice and mixed precision in one place, so every caller runs on CUDA or CPU alike."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

# CPU flags that give native bf16 arithmetic (oneDNN then runs bf16 convolutions and matmuls
# faster than fp32); without them bf16 is emulated and slower than fp32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def select_device(preference: str = "auto") -> torch.device:
    if preference in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} asked for, but CUDA is not available here")
    return device


@functools.cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 math natively (Linux ``/proc/cpuinfo``; False elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split() for flag in BF16_CPU_FLAGS)
    return False


@functools.cache
def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's marketing name and core count, printed beside every speed figure: machines
    of one kind differ (an AMD EPYC and an Intel Xeon VM of 2 cores are not the same speed)."""
    import os
    import platform

    name = ""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    flags = "avx512_bf16" if cpu_has_bf16(cpuinfo) else ""
    return f"{name}, {os.cpu_count()} cores" + (f", {flags}" if flags else "")


def mixed_precision_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """fp16 on CUDA; bf16 on a CPU with native bf16 when ``cpu_bf16``; None: full precision.

    Training asks for CPU bf16 (1.6x the images/s of fp32 on this project's AVX512-BF16 VM);
    inference does not, so embeddings served on a CPU match the evaluated fp32 numbers.
    """
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(
    device: torch.device, enabled: bool, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for ``device`` when ``enabled``, else a no-op (see above)."""
    dtype = mixed_precision_dtype(device, cpu_bf16) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Leaves autocast for a block (losses: distances and softmaxes want fp32)."""
    return torch.autocast(device_type=device.type, enabled=False)
