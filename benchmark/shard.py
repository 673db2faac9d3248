"""Which worker computes which cells when a run is spread over several processes.

A worker is ``Shard(rank, world)``. Cells are split by their prompt's text: a prompt belongs to worker
``hash(text) mod world``, with all its cells (every defense's and attack's attack, generate and judge
cells of that prompt). Splitting by text, not by id, keeps identical texts (an attack prompt that is also a
benign prompt, the same prompt in two sets) on one worker, since they share their images; so no two
workers ever draw the same image. The split depends only on the prompts, never on the machine, the order
or the number of cached cells: every worker of every launch agrees on it without talking to the others.

Prepare cells (one per defense and task) are needed by every worker: they are not split but claimed
(the first worker prepares, the others wait; see :class:`benchmark.store.CellClaims`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from benchmark.hashing import stable_hash


@dataclass(frozen=True)
class Shard:
    """Worker ``rank`` of ``world`` (0 <= rank < world)."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"a shard needs 0 <= rank < world, got rank {self.rank} of {self.world}")

    def takes(self, text: str) -> bool:
        return shard_of(text, self.world) == self.rank

    def __str__(self) -> str:
        return f"worker {self.rank} of {self.world}"


def shard_of(text: str, world: int) -> int:
    """The rank that owns the prompt ``text`` among ``world`` workers."""
    return int(stable_hash({"shard": text}, 12), 16) % world


@dataclass(frozen=True)
class Launch:
    """What ``torchrun`` and ``accelerate launch`` tell each process through its environment."""

    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)


def launch_from_env(env: dict[str, str] | None = None) -> Launch | None:
    """The launcher's ranks, or None for a plain process (or a launch of one process)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        return None
    if world <= 1:
        return None
    return Launch(rank, world, local_rank, local_world)


def cpu_count() -> int:
    """Cores this process may use (a SLURM allocation or taskset narrows it below the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(workers_on_this_node: int) -> int:
    """Give this worker its share of the cores: several processes that each take every core slow each
    other down far more than their number (sd-mini ESD steps of 2-6 s instead of 0.16 s). Returns the count."""
    threads = max(1, cpu_count() // max(1, workers_on_this_node))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch  # deferred: this module is imported by commands that never load torch

    torch.set_num_threads(threads)
    return threads
