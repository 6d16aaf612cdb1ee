"""Text for calibration and evaluation: built-in corpus, local files, pydoc, hub datasets.

Names load on first use, so the corpus (which validating a job reads for the
built-in task names) comes without tokenizers and torch."""

from typing import Any

_WHERE = {
    "CalibrationSet": "calibration", "add_bos": "calibration", "build_calibration": "calibration",
    "EvalWindows": "evaltext", "eval_windows": "evaltext",
    "TextSource": "sources", "load_documents": "sources",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"onecomp.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'onecomp.data' has no attribute {name!r}")
