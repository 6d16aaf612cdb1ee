"""Weight formats: registry keyed by format name."""

from onecomp.formats.base import FORMATS, FormatSpec, default_candidates, format_from_json, format_from_label, register_format
from onecomp.formats.intq import IntFormat, IntQuantLinear

__all__ = [
    "FORMATS", "FormatSpec", "IntFormat", "IntQuantLinear", "default_candidates", "format_from_json", "format_from_label", "register_format",
]
