"""Shared bounds for property-based fuzzing of every reader of outside input.

CI runs the ``ci`` profile (a fixed derandomised seed, a fixed number of cases); a longer search
is ``HYPOTHESIS_PROFILE=long`` (see README "Tests"). Each case must also stay inside a time and a
memory bound: a parser that is merely correct but takes seconds or hundreds of MiB on a small hostile
input is a defect (a site verifies what strangers send it).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")
HANG_FACTOR = 10  # a case slower than this many times its CPU bound is hung, however loaded the machine

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,  # the explicit bound below is what counts; CI machines are noisy
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@contextmanager
def bounded(seconds: float = 2.0, memory_bytes: int = 64 * 2**20) -> Iterator[None]:
    """Fail the case if the block uses more than ``seconds`` of CPU, or hangs (wall clock over
    ``HANG_FACTOR`` times that), or its Python allocations peak above ``memory_bytes`` (tracemalloc:
    what the parser itself allocates). CPU time, not wall time, so a loaded machine does not fail it."""
    tracemalloc.start()
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        yield
    finally:
        elapsed, cpu = time.monotonic() - start, time.process_time() - cpu_start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert cpu <= seconds, f"case used {cpu:.2f}s of CPU (bound {seconds}s)"
    assert elapsed <= seconds * HANG_FACTOR, f"case took {elapsed:.2f}s (hang bound {seconds * HANG_FACTOR}s)"
    assert peak <= memory_bytes, f"case peaked at {peak / 2**20:.1f} MiB (bound {memory_bytes / 2**20:.0f} MiB)"


def run_bounded(fn: Callable[[], T], seconds: float = 2.0, memory_bytes: int = 64 * 2**20) -> T:
    with bounded(seconds, memory_bytes):
        return fn()
