"""Device and dtype policy, in one place for every command: which device a job
runs on, the calibration length it implies, and the dtype of its forwards."""

from __future__ import annotations

from typing import Any

import torch

from onecomp.errors import OneCompError


def resolve_device(name: str) -> torch.device:
    """``auto`` (the first GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OneCompError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OneCompError(f"--device {name} was asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OneCompError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif device.type != "cpu":
        raise OneCompError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def resolve_compute_dtype(name: str, device: torch.device, hardware: dict[str, Any]) -> torch.dtype:
    """The calibration forwards' dtype: bfloat16 where the device computes it
    natively (GPUs from Ampere on, CPUs with avx512_bf16/AMX), float32 elsewhere."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if hardware.get("bf16_cpu") else torch.float32
