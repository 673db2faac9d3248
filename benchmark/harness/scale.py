"""One run over several processes: workers compute their shares into the shared store, one process merges.

Every worker runs :func:`run_worker` for its :class:`~benchmark.shard.Shard`: the stages over its prompts
only, into the store under ``--out``, then a report ``RUN_DIR/workers/rank-<i>-of-<n>.json`` (its counters,
host, device, threads). Then one process collects (:func:`collect`): it computes nothing, reads every cell
and writes the records and leaderboards exactly as a one-process run writes them.

Two ways in, both through the same functions:

- ``torchrun --nproc-per-node N -m benchmark run ...`` / ``accelerate launch -m benchmark run ...``
  (:func:`run_launched`): each rank is a worker on ``cuda:LOCAL_RANK``; rank 0 then waits for the others'
  reports and collects. The ranks talk once, at the start (gloo), to agree on a launch token, so that rank
  0 never mistakes an earlier launch's report for this one's.
- ``--executor local|slurm --workers N`` (``benchmark.harness.executors``): submitit jobs, one per shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.api.errors import ConfigError, UserError
from benchmark.harness.config import RunConfig
from benchmark.harness.resolve import Plan, resolve
from benchmark.harness.runner import RunSummary, execute
from benchmark.harness.stages import STAGES, StageCounter
from benchmark.shard import Launch, Shard, set_threads
from benchmark.store import CellStore, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    """What a worker writes when it has finished its share: enough to check that every cell was computed
    exactly once (the sum over workers of ``computed`` equals a one-process run's)."""

    token: str
    rank: int
    world: int
    host: str
    device: str
    threads: int
    seconds: float
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> computed, cached
    failures: list[str] = field(default_factory=list)


class WorkersFailedError(Exception):
    """Some workers did not finish. Their finished cells are in the store; rerunning the command computes
    only the missing ones."""


def report_path(run_dir: Path, rank: int, world: int) -> Path:
    return run_dir / "workers" / f"rank-{rank}-of-{world}.json"


def plan_for_workers(config: RunConfig, workers_device: str | None = None) -> Plan:
    """Resolve ``config`` as the workers will. ``workers_device``: the device the workers have when this
    process lacks it (a SLURM login node without a GPU submitting GPU jobs); the plan's device is then
    theirs, everything else checked here."""
    if workers_device is None or torch.cuda.is_available() or not workers_device.startswith("cuda"):
        return resolve(config)
    plan = resolve(dataclasses.replace(config, device="cpu", dtype="fp32" if config.dtype == "auto" else config.dtype))
    plan.config.device = workers_device
    plan.config.dtype = "fp16" if config.dtype == "auto" else config.dtype  # resolve's default on CUDA
    return plan


def write_run_config(plan: Plan) -> Path:
    """The run's config.yaml, written before any worker starts: workers check they see it (a shared --out)."""
    run_dir = CellStore(plan.config.out).run_dir(plan.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", plan.config.to_yaml())
    return run_dir


def run_worker(config: RunConfig, shard: Shard, token: str, workers_on_node: int,
               local_rank: int | None = None) -> WorkerReport:
    """One worker: its share of the cells, then its report. The function submitit runs in each job."""
    threads = set_threads(workers_on_node)
    if local_rank is not None and torch.cuda.is_available() and config.device in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU; cell keys keep saying "cuda"
    began = time.perf_counter()
    summary = execute(config, shard=shard)
    device = f"cuda:{torch.cuda.current_device()}" if uses_cuda(config) else "cpu"
    report = WorkerReport(token=token, rank=shard.rank, world=shard.world, host=socket.gethostname(), device=device,
                          threads=threads, seconds=time.perf_counter() - began,
                          counters={c.stage: {"computed": c.computed, "cached": c.cached} for c in summary.counters},
                          failures=[f.line() for f in summary.failures])
    atomic_write_json(report_path(summary.run_dir, shard.rank, shard.world), dataclasses.asdict(report))
    log.info("%s done: %s", shard, ", ".join(str(c) for c in summary.counters))
    return report


def uses_cuda(config: RunConfig) -> bool:
    return torch.cuda.is_available() and config.device != "cpu" and not config.device.startswith("mps")


def read_reports(run_dir: Path, world: int, token: str | None = None) -> dict[int, WorkerReport]:
    """The workers' reports found for a run split ``world`` ways (of launch ``token`` when given)."""
    reports = {}
    for rank in range(world):
        path = report_path(run_dir, rank, world)
        try:
            report = WorkerReport(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if token is None or report.token == token:
            reports[rank] = report
    return reports


def wait_for_reports(run_dir: Path, world: int, token: str, poll_s: float = 1.0,
                     every_s: float = 30.0) -> dict[int, WorkerReport]:
    """Block until every worker of launch ``token`` has reported; log the progress now and then."""
    last = time.monotonic()
    while True:
        reports = read_reports(run_dir, world, token)
        if len(reports) == world:
            return reports
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            log.info("waiting for workers: %d of %d finished (%s still running)", len(reports), world,
                     ", ".join(str(r) for r in range(world) if r not in reports))
        time.sleep(poll_s)


def summed_counters(reports: dict[int, WorkerReport]) -> list[StageCounter]:
    counters = []
    for stage in STAGES:
        counter = StageCounter(stage)
        for report in reports.values():
            counter.computed += report.counters.get(stage, {}).get("computed", 0)
            counter.cached += report.counters.get(stage, {}).get("cached", 0)
        counters.append(counter)
    return counters


def collect(plan: Plan, reports: dict[int, WorkerReport] | None = None) -> RunSummary:
    """Merge: records and leaderboards from the store, as one process writes them. The summary's counters
    are the workers' (summed) when their reports are given: what this run computed, not what was read."""
    summary = execute(plan.config, collect=True, plan=plan)
    log.info("collected every cell from the store (done/total per stage: %s)",
             ", ".join(f"{c.stage} {c.cached}/{c.cached}" for c in summary.counters))
    if reports:
        summary.counters = summed_counters(reports)
        for rank in sorted(reports):
            r = reports[rank]
            log.info("worker %d of %d (%s, %s, %d threads, %.1f s): %s", rank, r.world, r.host, r.device, r.threads,
                     r.seconds, ", ".join(f"{s} {v['computed']} computed" for s, v in r.counters.items()))
    return summary


def run_launched(config: RunConfig, launch: Launch) -> RunSummary | None:
    """A rank of ``torchrun`` / ``accelerate launch``: compute this rank's share; rank 0 then waits for the
    others and collects (returns the summary); the other ranks return None."""
    import torch.distributed as dist  # deferred: only launched runs talk to each other

    plan = resolve(config)  # every rank checks the config: bad input fails on all ranks alike, before work
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo")  # MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE from the launcher
    try:
        token = [uuid.uuid4().hex if launch.rank == 0 else ""]
        if launch.rank == 0:
            write_run_config(plan)  # before the broadcast: the others look for it once they have the token
        dist.broadcast_object_list(token, src=0)
    finally:
        if owns_group:
            dist.destroy_process_group()  # no collective after this: ranks finish at their own pace
    run_worker(plan.config, launch.shard, token[0], launch.local_world, launch.local_rank)
    if launch.rank != 0:
        return None
    reports = wait_for_reports(CellStore(plan.config.out).run_dir(plan.run_id), launch.world, token[0])
    return collect(plan, reports)


def merge(run_dir: Path) -> RunSummary:
    """``python -m benchmark merge RUN_DIR``: collect a run whose workers have finished, from its config.yaml."""
    import yaml

    from benchmark.harness.config import config_from_mapping

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass a run directory (the one the run printed or logged)")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["out"] = str(run_dir.resolve().parent)  # the store is the run directory's parent, wherever it moved
    config = config_from_mapping(data, origin=str(path))
    plan = plan_for_workers(config, config.device)
    if plan.run_id != run_dir.name:
        raise UserError(f"{path} resolves to run {plan.run_id}, not {run_dir.name}: the code, plugins or prompt "
                        "files changed since the run; merge with the checkout that ran it")
    found = sorted((run_dir / "workers").glob("rank-*-of-*.json"), key=lambda p: p.stat().st_mtime)
    reports = read_reports(run_dir, int(found[-1].stem.rsplit("-of-", 1)[1])) if found else None  # latest split
    return collect(plan, reports)
