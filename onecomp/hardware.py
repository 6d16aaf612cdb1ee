"""What this machine offers: CPU, memory, GPUs, bf16 support, disk."""

from __future__ import annotations

import os
import resource
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch


def _cpu_info() -> tuple[str | None, set[str]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


@dataclass
class HardwareProfile:
    cpu_count: int
    cpu_model: str | None
    ram_total_bytes: int
    ram_available_bytes: int
    bf16_cpu: bool
    gpus: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_hardware() -> HardwareProfile:
    model, flags = _cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mem = psutil.virtual_memory()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "total_memory_bytes": int(props.total_memory), "bf16": bool(torch.cuda.is_bf16_supported())})
    return HardwareProfile(
        cpu_count=cores,
        cpu_model=model,
        ram_total_bytes=int(mem.total),
        ram_available_bytes=int(mem.available),
        bf16_cpu=bool(flags & {"avx512_bf16", "amx_bf16"}),
        gpus=gpus,
    )


def disk_free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
