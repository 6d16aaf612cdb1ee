"""What this machine offers: CPU, memory, GPUs, bf16 support, disk.

Used to pick the compute dtype (bf16 is ~2x faster than fp32 on CPUs with
avx512_bf16/amx_bf16) and to warn before a job that cannot fit.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _read_cpuinfo(path: Path = CPUINFO) -> str:
    """The text of /proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """Model name and feature flags of the first processor listed."""
    model: str | None = None
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def usable_cpu_count() -> int:
    """Cores this process may run on (affinity, cgroup pinning), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "name": props.name,
                "total_memory_bytes": int(props.total_memory),
                # bf16 tensor cores from Ampere (compute capability 8.0) on.
                "bf16": props.major >= 8,
            }
        )
    return gpus


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


@dataclass
class HardwareProfile:
    cpu_count: int
    cpu_model: str | None
    ram_total_bytes: int
    ram_available_bytes: int
    bf16_cpu: bool
    gpus: list[dict[str, Any]] = field(default_factory=list)

    def disk_free_bytes(self, path: Path) -> int:
        return disk_free_bytes(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: it goes into reports."""
        return asdict(self)


def detect_hardware() -> HardwareProfile:
    model, flags = parse_cpuinfo(_read_cpuinfo())
    mem = psutil.virtual_memory()
    return HardwareProfile(
        cpu_count=usable_cpu_count(),
        cpu_model=model,
        ram_total_bytes=int(mem.total),
        ram_available_bytes=int(mem.available),
        bf16_cpu=bool(flags & BF16_CPU_FLAGS),
        gpus=_gpus(),
    )


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh at its current size.

    A job run inside a longer-lived process (a test run, a notebook, a batch of
    jobs) would otherwise report whatever the process peaked at before it. Linux
    only (``/proc/self/clear_refs``); returns False where it cannot reset.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_bytes() -> int:
    """Resident memory of this process now: what a job started here inherits
    (the interpreter, imported libraries, whatever the calling program holds)."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far.

    On Linux this is VmHWM, which starts afresh when the program is executed;
    getrusage's ru_maxrss does not, so a job started from a large parent process
    (a test run, a batch script) would report the parent's peak as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024
