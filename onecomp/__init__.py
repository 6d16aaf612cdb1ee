"""onecomp: post-training compression of large language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from onecomp.checkpoint import load as load


def __getattr__(name: str) -> Any:
    # Lazy: `import onecomp` stays cheap (no torch) for the CLI's --help.
    if name == "load":
        from onecomp.checkpoint import load

        return load
    raise AttributeError(name)


__all__ = ["load", "__version__"]
