"""The job's own log, ``OUT/logs/onecomp.log``: a header saying what ran where,
then every progress and info line of the run (appended to on each resume)."""

from __future__ import annotations

import logging
import platform
import shlex
import sys
from pathlib import Path

import torch
import transformers

from onecomp import __version__
from onecomp.config import JobConfig
from onecomp.devices import resolve_compute_dtype
from onecomp.hardware import detect_hardware

log = logging.getLogger("onecomp")
LOG_FILE = "onecomp.log"


def command_line(argv: list[str]) -> str:
    """The command as typed: `onecomp ...` for the CLI, however it was started."""
    prog = Path(argv[0]).name if argv else "python"
    return shlex.join(["onecomp" if prog in ("onecomp", "cli.py") else prog, *argv[1:]])


def header_lines(config: JobConfig, device: torch.device, compute_dtype: torch.dtype, argv: list[str] | None = None) -> list[str]:
    """What a reader of the log needs to reproduce or explain the run."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return [
        f"command: {command_line(sys.argv if argv is None else argv)}",
        f"onecomp {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"device: {device.type} ({where}), compute dtype: {str(compute_dtype).removeprefix('torch.')}",
        f"model: {config.model}, output: {config.output}, stages: {', '.join(config.stages)}",
        f"calibration: {config.calib.source}, seed {config.calib.seed}, {config.calib.nsamples} sequences",
    ]


def open_job_log(out: Path, config: JobConfig, device: torch.device) -> logging.Handler:
    """Attach the job log to the ``onecomp`` logger and write its header; the caller removes and closes it."""
    handler = logging.FileHandler(out / "logs" / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    compute_dtype = resolve_compute_dtype(config.calib.dtype, device, detect_hardware().to_dict())
    for line in header_lines(config, device, compute_dtype):
        log.info("%s", line)
    return handler
