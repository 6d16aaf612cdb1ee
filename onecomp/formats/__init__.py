"""Weight formats: registry keyed by format name.

The specs import without torch (a job's settings validate without the
numerics); their inference modules load on first use."""

from typing import Any

from onecomp.formats.base import FORMATS, FormatSpec, TrainingFootprint, default_candidates, format_from_json, format_from_label, plan_training_footprint, register_format
from onecomp.formats.intq import IntFormat
from onecomp.formats.lords import LoRDSFormat
from onecomp.formats.sign_factor import SignFactorFormat

_MODULES = {"IntQuantLinear": "intq_linear", "LoRDSLinear": "lords_linear", "SignFactorLinear": "sign_factor_linear"}

__all__ = [
    "FORMATS", "FormatSpec", "IntFormat", "IntQuantLinear", "LoRDSFormat", "LoRDSLinear", "SignFactorFormat", "SignFactorLinear", "TrainingFootprint", "default_candidates", "format_from_json", "format_from_label", "plan_training_footprint", "register_format",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"onecomp.formats.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'onecomp.formats' has no attribute {name!r}")
