"""Logging set-up and ``step()``: named, nested, timed steps in the log (after mkosi's complete_step)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

LOGGER_NAME = "vmi"
log = logging.getLogger(LOGGER_NAME)

_depth = 0


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        indent = "  " * getattr(record, "depth", 0)
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"{indent}{prefix}{record.getMessage()}"


def setup_logging(verbose: bool = False) -> None:
    """Send the pipeline's log to stderr, once; ``verbose`` shows debug lines."""
    root = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_vmi", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._vmi = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


@contextlib.contextmanager
def step(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log ``name``, run the block one level deeper, then log how long it took.

    When ``timings`` is given, the elapsed seconds are stored there under ``name``.
    """
    global _depth
    log.info("▶ %s", name, extra={"depth": _depth})
    start = time.monotonic()
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        elapsed = time.monotonic() - start
        if timings is not None:
            timings[name] = round(elapsed, 3)
        mark = "✓" if ok else "✗"
        log.info("%s %s (%.1fs)", mark, name, elapsed, extra={"depth": _depth})
