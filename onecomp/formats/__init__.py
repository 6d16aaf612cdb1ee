"""Weight formats: registry keyed by format name."""

from onecomp.formats.base import FORMATS, FormatSpec, TrainingFootprint, default_candidates, format_from_json, format_from_label, plan_training_footprint, register_format
from onecomp.formats.intq import IntFormat, IntQuantLinear
from onecomp.formats.lords import LoRDSFormat, LoRDSLinear
from onecomp.formats.sign_factor import SignFactorFormat, SignFactorLinear

__all__ = [
    "FORMATS", "FormatSpec", "IntFormat", "IntQuantLinear", "LoRDSFormat", "LoRDSLinear", "SignFactorFormat", "SignFactorLinear", "TrainingFootprint", "default_candidates", "format_from_json", "format_from_label", "plan_training_footprint", "register_format",
]
