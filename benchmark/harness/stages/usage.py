"""Wall time and peak memory per stage of a run, so that cost at full size is measured, not guessed.

The run's stages interleave (each defense is prepared, attacked, drawn, then the next one), so a stage's
figures are accumulated over all its intervals: ``seconds`` is their sum, ``peak_rss_bytes`` the highest
resident set size of the process seen while the stage ran (sampled by a background thread every
``interval`` seconds, so a spike shorter than that may be missed; the process's lifetime high-water mark
bounds it from above), ``cuda_peak_bytes`` the CUDA allocator's peak while the stage ran (exact; reset at
each entry). Figures a platform cannot give stay ``None``, never 0.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmark.harness.stages import StageCounter

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process's current resident set size (Linux ``/proc``), or None where that is not readable."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class StageUsage:
    """Attributes samples of the process's memory to the stage that is running (one at a time)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._current: StageCounter | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(resident_bytes())

    def _note(self, rss: int | None) -> None:
        with self._lock:
            counter = self._current
            if counter is not None and rss is not None:
                counter.peak_rss_bytes = max(counter.peak_rss_bytes or 0, rss)

    def start(self) -> StageUsage:
        if self._thread is None and resident_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, name="stage-usage", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)
            self._thread = None

    @contextmanager
    def measure(self, counter: StageCounter) -> Iterator[None]:
        """Count the enclosed work as ``counter``'s stage (nested use keeps the outer stage's attribution)."""
        with self._lock:
            outer, self._current = self._current, counter
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self._note(resident_bytes())
        start = time.perf_counter()
        try:
            yield
        finally:
            counter.seconds += time.perf_counter() - start
            self._note(resident_bytes())
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                counter.cuda_peak_bytes = max(counter.cuda_peak_bytes or 0, int(torch.cuda.max_memory_allocated()))
            with self._lock:
                self._current = outer
