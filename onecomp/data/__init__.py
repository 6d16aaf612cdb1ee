"""Text for calibration and evaluation: built-in corpus, local files, pydoc, hub datasets."""

from onecomp.data.calibration import CalibrationSet, add_bos, build_calibration
from onecomp.data.evaltext import EvalWindows, eval_windows
from onecomp.data.sources import TextSource, load_documents

__all__ = [
    "CalibrationSet",
    "EvalWindows",
    "TextSource",
    "add_bos",
    "build_calibration",
    "eval_windows",
    "load_documents",
]
