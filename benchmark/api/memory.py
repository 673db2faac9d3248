"""Out-of-memory back-off for batched work.

A batch that does not fit the accelerator's memory must not end a run that has finished cells: the batch is
halved and retried (and the smaller size kept for the rest of the work), each halving is logged and returned
as an event the run records. Only a batch of one that still does not fit is an error, and it says what to do.

Work handed to :meth:`Backoff.run` must be safe to repeat: a chunk's results are written only after the
chunk succeeded (the stages write a cell after its batch is drawn), so a retried chunk loses nothing.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from benchmark.api.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")


class OutOfMemoryAtBatchOneError(UserError):
    """One item alone does not fit in memory."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the accelerator (or the CPU allocator) running out of memory."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", ())) or isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    # MPS and some CPU allocators raise a plain RuntimeError with this wording.
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory() -> None:
    """Return freed blocks to the device so the retried smaller batch can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Backoff:
    """Runs work in chunks of at most ``batch_size`` items, halving the size on out-of-memory errors."""

    batch_size: int
    what: str  # what is being batched, for the log and the record ("generate mini-unsafe/saferedir")
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{self.what}: batch size must be >= 1, got {self.batch_size}")

    def run(self, items: Sequence[T], process: Callable[[Sequence[T]], None]) -> None:
        start = 0
        while start < len(items):
            size = min(self.batch_size, len(items) - start)
            try:
                process(items[start:start + size])
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                release_cached_memory()
                if size == 1:
                    raise OutOfMemoryAtBatchOneError(
                        f"{self.what}: one item alone does not fit in memory ({str(error).splitlines()[0]}). "
                        "Sample in half precision (--dtype fp16 or bf16), at a smaller resolution (--height, "
                        "--width), or on a device with more memory; every finished cell is kept, so rerunning "
                        "the same command resumes") from error
                self.batch_size = size // 2
                self.events.append({"what": self.what, "from": size, "to": self.batch_size})
                log.warning("%s: out of memory at batch %d, retrying at batch %d", self.what, size, self.batch_size)
                continue
            start += size
