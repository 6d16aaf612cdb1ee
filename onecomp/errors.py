"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class OneCompError(Exception):
    """An error caused by input or environment, reported without a traceback."""

    exit_code: int = 2


class NotImplementedYet(OneCompError):
    """A documented capability that this version does not provide yet."""

    exit_code = 3


class Interrupted(OneCompError):
    """The user stopped the run (Ctrl-C); the message says how to continue."""

    exit_code = 130
