"""Memory safety for batched and differentiated work: out-of-memory back-off, micro-batches with gradient
accumulation, gradient checkpointing, and a batch size measured from one item's cost.

A batch that does not fit the accelerator's memory must not end a run that has finished cells: the batch is
halved and retried (and the smaller size kept for the rest of the work), each halving is logged and returned
as an event the run records. Only a batch of one that still does not fit is an error, and it says what to do.

* :meth:`Backoff.run`: work in chunks (generation, a chunk of prompts under attack). Work handed to it must be
  safe to repeat: a chunk's results are kept only after the chunk succeeded (the stages write a cell after
  its batch is drawn), so a retried chunk loses nothing.
* :meth:`Backoff.accumulate`: one optimisation step over a batch, in micro-batches whose gradients add up to
  the whole batch's, so a halved micro-batch changes float rounding, never the step (training, Concept
  Inversion's images per step).
* :func:`recording_backoffs`: the stages collect every halving of a component's work in their counters (run
  notes, provenance ``oom_backoffs``) without the component knowing the stage.
* :func:`gradient_checkpointing`: recompute activations in the backward pass instead of keeping them (less
  memory for one more forward, the same gradients), restored afterwards.
* :func:`measured_batch_size`: on CUDA, the batch that fits next to what is resident, from one item's
  measured peak memory; elsewhere the requested size.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from benchmark.api.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

# What to do when one item alone does not fit (the generate stage's advice; components pass their own).
DEFAULT_HINT = ("Sample in half precision (--dtype fp16 or bf16), at a smaller resolution (--height, --width), or "
                "on a device with more memory; every finished cell is kept, so rerunning the same command resumes")


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


# Open :func:`recording_backoffs` blocks of this thread / task; every halving is appended to each of them.
_RECORDERS: ContextVar[tuple[list[dict[str, Any]], ...]] = ContextVar("oom_backoff_recorders", default=())


@contextlib.contextmanager
def recording_backoffs() -> Iterator[list[dict[str, Any]]]:
    """Within the block, every :class:`Backoff` halving (``{"what", "from", "to"}``) is also appended to the
    yielded list: how a stage records the halvings of a component's own batches (an attack's prompt chunks,
    a defense's training micro-batches) in its counter, hence in the run's notes and provenance."""
    events: list[dict[str, Any]] = []
    token = _RECORDERS.set((*_RECORDERS.get(), events))
    try:
        yield events
    finally:
        _RECORDERS.reset(token)


def memory_hint(kind: str, name: str, options: Any = None) -> str:
    """What to do when one item of component ``name`` (``kind`` attack / defense) does not fit: its gradient
    checkpointing switch first when it has one that is off, then precision, resolution and the device."""
    steps = []
    if getattr(options, "gradient_checkpointing", True) is False:
        steps.append(f"enable gradient checkpointing (--option {kind}:{name}.gradient_checkpointing=true)")
    steps += ["run in half precision (--dtype fp16 or bf16)", "at a smaller resolution (--height, --width)",
              "or on a device with more memory"]
    text = ", ".join(steps)
    return text[0].upper() + text[1:] + "; every finished cell is kept, so rerunning the same command resumes"


def attack_backoff(attack: Any, ctx: Any, batch_size: int, part: str = "") -> Backoff:
    """A :class:`Backoff` for an attack's batched work. Its events name the attack, the task and the defense
    (``attack unlearndiff mini-unsafe/esd-x``), as the generate stage's name the task and the defense, and
    ``part`` the work when an attack batches more than one thing (``candidates``)."""
    defense = getattr(getattr(getattr(ctx, "defended", None), "defense", None), "name", None) or "none"
    what = f"attack {attack.name} {ctx.task.name}/{defense}" + (f" {part}" if part else "")
    return Backoff(batch_size, what, hint=memory_hint("attack", attack.name, attack.options))


@dataclass
class Backoff:
    """Runs work in chunks of at most ``batch_size`` items, halving the size on out-of-memory errors."""

    batch_size: int
    what: str  # what is being batched, for the log and the record ("generate mini-unsafe/saferedir")
    events: list[dict[str, Any]] = field(default_factory=list)
    hint: str = DEFAULT_HINT  # what to do when one item alone does not fit

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{self.what}: batch size must be >= 1, got {self.batch_size}")

    def run(self, items: Sequence[T], process: Callable[[Sequence[T]], None]) -> None:
        """``process`` every item once, in order, in chunks; a chunk that runs out of memory is retried whole
        at half the size (so ``process`` must keep a chunk's results only once it returns)."""
        start = 0
        while start < len(items):
            size = min(self.batch_size, len(items) - start)
            try:
                process(items[start:start + size])
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                self._halve(size, error)
                continue
            start += size

    def accumulate(self, count: int, part: Callable[[slice], torch.Tensor], reset: Callable[[], None]) -> float:
        """One optimisation step's forward and backward over ``count`` rows, in micro-batches of at most
        ``batch_size`` rows; returns the step's loss.

        ``part(rows)`` returns the loss of ``rows`` as its *share* of the step's loss (every term divided by
        the step's full count, not the micro-batch's), so that the shares sum to the step's loss and their
        accumulated gradients to its gradient: a smaller micro-batch changes float rounding, never the
        step. ``part`` must draw no randomness (draw the step's noise and timesteps before). On an
        out-of-memory error ``reset()`` clears the gradients and the step starts over at half the size: a
        backward that failed midway may already have added to some of them.
        """
        if count < 1:
            raise ValueError(f"{self.what}: a step needs at least one row, got {count}")
        while True:
            size = min(self.batch_size, count)
            try:
                total = 0.0
                for start in range(0, count, size):
                    loss = part(slice(start, min(start + size, count)))
                    loss.backward()
                    total += float(loss.detach())
                return total
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                reset()
                self._halve(size, error)

    def _halve(self, size: int, error: BaseException) -> None:
        release_cached_memory()
        if size == 1:
            raise OutOfMemoryAtBatchOneError(
                f"{self.what}: one item alone does not fit in memory ({str(error).splitlines()[0]}). "
                f"{self.hint}") from error
        self.batch_size = size // 2
        event = {"what": self.what, "from": size, "to": self.batch_size}
        self.events.append(event)
        for recorder in _RECORDERS.get():
            recorder.append(event)
        log.warning("%s: out of memory at batch %d, retrying at batch %d", self.what, size, self.batch_size)


# ---------------------------------------------------------------------------------------- checkpointing
def _checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Looked up at call time (a test counts the calls by patching it). Non-reentrant: it supports inputs that
    # need no gradient and keyword arguments, and it is what both libraries default to.
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


_MISSING = object()


@contextlib.contextmanager
def gradient_checkpointing(*models: torch.nn.Module | None, enabled: bool = True) -> Iterator[int]:
    """Within the block, every module of ``models`` that supports activation checkpointing (diffusers' UNet
    blocks, transformers' encoder layers: the modules with a ``gradient_checkpointing`` flag) recomputes its
    activations in the backward pass instead of keeping them: less memory for one more forward, the same
    gradients. Afterwards every flag is as it was. Yields how many modules checkpoint (0 when disabled).

    Both libraries checkpoint a module when its flag is set and gradients are enabled; transformers' layers
    also require the module to be in training mode (and older diffusers blocks did), so the *module's own*
    ``training`` flag is set as well. Its children keep theirs (dropout stays as it was), and nothing in those
    modules' own forward reads it. Switching a model with ``.train()`` / ``.eval()`` inside the block resets
    those flags: enter the block after such a switch (or switch to ``.train()``).

    A forward hook inside a checkpointed module runs again in the recompute; the defenses' hooks act on the
    conditioning and on sampling (no gradients, no checkpointing), not inside these modules.
    """
    saved: list[tuple[torch.nn.Module, bool, Any, bool]] = []
    if enabled:
        for model in models:
            if model is None:
                continue
            for module in model.modules():
                if isinstance(getattr(module, "gradient_checkpointing", None), bool):
                    saved.append((module, module.gradient_checkpointing,
                                  module.__dict__.get("_gradient_checkpointing_func", _MISSING), module.training))
        if not saved:
            log.warning("gradient checkpointing asked for, but no module of %s supports it; running without",
                        ", ".join(type(m).__name__ for m in models if m is not None))
        # The libraries' own switches (enable_gradient_checkpointing, activation_checkpointing_enable) set the
        # same two attributes on the same modules; setting them here is version-independent and restorable.
        for module, *_ in saved:
            module._gradient_checkpointing_func = _checkpoint
            module.gradient_checkpointing = True
            module.training = True
    try:
        yield len(saved)
    finally:
        for module, flag, func, training in saved:
            module.gradient_checkpointing = flag
            if func is _MISSING:
                module.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                module._gradient_checkpointing_func = func
            module.training = training


# ---------------------------------------------------------------------------------------- measured batch
class MemoryProbes(Protocol):
    """The device-memory readings :func:`measured_batch_size` needs (bytes); injectable for tests."""

    def allocated(self) -> int: ...  # memory held by tensors now (the resident baseline)

    def reset_peak(self) -> None: ...

    def peak(self) -> int: ...  # the most held since reset_peak

    def available(self) -> int: ...  # what more tensors could take


@dataclass
class CudaMemory:
    """:class:`MemoryProbes` of one CUDA device."""

    device: torch.device

    def allocated(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        # Blocks the caching allocator holds but no tensor uses are free for the batch too.
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + max(0, cached))


def measured_batch_size(requested: int, run_one: Callable[[], Any], *, device: torch.device | str, what: str,
                        probes: MemoryProbes | None = None, headroom: float = 0.85,
                        prepare: Callable[[], Any] | None = None) -> int:
    """The batch size to start with: ``min(requested, floor(headroom * available / per_item))``, at least 1,
    where ``per_item`` is the peak memory of ``run_one()`` (the work on one item, e.g. one prompt's forward and
    backward) above what was resident before it. ``prepare()`` runs first, outside the measurement: it loads
    what the work needs once (another model), which is resident, not a per-item cost. Only on CUDA (or with
    injected ``probes``): elsewhere ``requested`` unchanged, and neither function is called. The
    :class:`Backoff` that runs the work still halves it if the estimate was too high (memory fragments;
    per-item cost is not exactly linear). Resets CUDA's peak-memory statistic."""
    if probes is None:
        if torch.device(device).type != "cuda":
            return requested
        probes = CudaMemory(torch.device(device))
    if requested <= 1:
        return requested
    if prepare is not None:
        prepare()
    release_cached_memory()
    baseline = probes.allocated()
    probes.reset_peak()
    try:
        run_one()
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        release_cached_memory()
        log.warning("%s: one item alone ran out of memory while measuring its cost; starting at batch 1", what)
        return 1
    per_item = max(1, probes.peak() - baseline)
    release_cached_memory()
    available = probes.available()
    size = max(1, min(requested, math.floor(headroom * available / per_item)))
    log.info("%s: one item needs %.1f MiB above the resident %.1f MiB; %.1f MiB available -> batch %d (asked %d)",
             what, per_item / 2**20, baseline / 2**20, available / 2**20, size, requested)
    return size
