"""Weight formats: registry keyed by format name."""

from onecomp.formats.base import FORMATS, FormatSpec, format_from_json, register_format
from onecomp.formats.intq import IntFormat, IntQuantLinear

__all__ = ["FORMATS", "FormatSpec", "IntFormat", "IntQuantLinear", "format_from_json", "register_format"]
