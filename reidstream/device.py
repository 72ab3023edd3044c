"""Device choice and mixed precision in one place, so every caller runs on CUDA or CPU alike."""

from __future__ import annotations

import contextlib

import torch


def select_device(preference: str = "auto") -> torch.device:
    if preference in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device, fp16: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when asked; a no-op on CPU, where half precision is slower."""
    if fp16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
