"""onecomp: post-training compression of large language models.

``onecomp.compress(model, config)`` runs a job as ``onecomp compress`` does;
``onecomp.load(pivot)`` loads its result as a transformers model;
``onecomp.JobConfig`` is the job's settings (the keys of ``job.yaml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from onecomp.api import compress as compress
    from onecomp.checkpoint import load as load
    from onecomp.config import JobConfig as JobConfig

# Lazy: `import onecomp` stays cheap (no torch) for the CLI's --help.
_LAZY = {"compress": "onecomp.api", "load": "onecomp.checkpoint", "JobConfig": "onecomp.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onecomp' has no attribute {name!r}")


__all__ = ["compress", "load", "JobConfig", "__version__"]
