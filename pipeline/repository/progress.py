"""Upload progress: a tqdm bar with rate and ETA on stderr when a person is watching, a log line always."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm

from pipeline.log import log


class Progress:
    """Counts bytes from any thread; shows a bar only on a terminal so logs stay readable in CI."""

    def __init__(self, total: int, name: str, bar: tqdm | None) -> None:
        self.total = total
        self.name = name
        self.done = 0
        self._bar = bar
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)


@contextlib.contextmanager
def progress_bar(total: int, name: str, enabled: bool = True) -> Iterator[Progress]:
    show = enabled and sys.stderr.isatty()
    bar = tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) if show else None
    progress = Progress(total, name, bar)
    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
    elapsed = max(time.monotonic() - progress.started, 1e-6)
    log.info(
        "%s: %.1f MiB in %.1fs (%.1f MiB/s)", name, progress.done / 1048576, elapsed, progress.done / 1048576 / elapsed
    )
