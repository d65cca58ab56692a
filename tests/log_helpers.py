"""Reading what detforge logs, for tests of commands that report through the "detforge" logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def detforge_log() -> Iterator[list[str]]:
    """Messages of the "detforge" logger while the block runs (once the command line has set it
    up it no longer propagates to the root logger, where pytest's log capture listens)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log, handler = logging.getLogger("detforge"), Collect(logging.INFO)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
