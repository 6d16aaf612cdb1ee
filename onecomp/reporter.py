"""How long-running work reports progress; the CLI renders it with rich,
tests and the Python API use the silent default."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Protocol

log = logging.getLogger("onecomp")


class Task(Protocol):
    def advance(self, n: int = 1, status: str | None = None) -> None: ...

    def set_total(self, total: int) -> None: ...


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> "contextmanager[Task]": ...

    def info(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: int = 1, status: str | None = None) -> None:
        return None

    def set_total(self, total: int) -> None:
        return None


class NullReporter:
    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        log.info("%s", description)
        yield _NullTask()

    def info(self, message: str) -> None:
        log.info("%s", message)
