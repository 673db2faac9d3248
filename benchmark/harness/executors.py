"""``run --executor local|slurm --workers N``: one job per shard through submitit, then one merge.

The submitting process resolves the run, writes its config.yaml, and reads the store to find which
shards still miss cells (all of them on a first run; after a crash, only the crashed workers'). It
submits one job per such shard (a SLURM job array, or local processes with submitit's local executor,
which runs the very same code path), waits for them while printing their progress, and collects. A job
that fails (a crash, ``kill -9``, a node lost) fails the command with exit 4; its finished cells stay in
the store, and the same command again submits only what is missing.

submitit is imported here only, and this module only when ``--executor`` is given.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmark.api.errors import ConfigError
from benchmark.harness.config import RunConfig
from benchmark.harness.runner import RunIncompleteError, RunSummary, execute
from benchmark.harness.scale import (
    WorkersFailedError,
    collect,
    plan_for_workers,
    read_reports,
    run_worker,
    write_run_config,
)
from benchmark.shard import Shard

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # local jobs run as long as the run takes


@dataclass
class ExecutorOptions:
    kind: str
    workers: int
    slurm_partition: str | None = None
    slurm_gpus_per_task: int = 1
    slurm_cpus_per_task: int | None = None
    slurm_time: int = 240  # minutes
    poll_s: float = 5.0


def check_executor(options: ExecutorOptions) -> None:
    """Bad input fails here, before anything is resolved or submitted."""
    if options.kind not in EXECUTORS:
        close = difflib.get_close_matches(options.kind, EXECUTORS, n=1)
        raise ConfigError(f"--executor {options.kind!r}: unknown; use local or slurm"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
    if options.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {options.workers}")
    if options.slurm_time < 1 or options.slurm_gpus_per_task < 0:
        raise ConfigError("--slurm-time must be >= 1 (minutes) and --slurm-gpus-per-task >= 0")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor {options.kind} needs submitit: pip install -e \".[scale]\"") from None
    if options.kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm: sbatch is not on PATH here; submit from a SLURM login node, or use "
                          "--executor local (this machine) or torchrun (one node, several GPUs)")


def _executor(options: ExecutorOptions, folder: Path):
    import submitit

    if options.kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)  # --slurm-time is for SLURM jobs only
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    params = {"time": options.slurm_time, "ntasks_per_node": 1, "array_parallelism": options.workers,
              "job_name": "unlearn-arena"}
    if options.slurm_partition:
        params["partition"] = options.slurm_partition
    if options.slurm_gpus_per_task:
        params["gpus_per_node"] = options.slurm_gpus_per_task
    if options.slurm_cpus_per_task:
        params["cpus_per_task"] = options.slurm_cpus_per_task
    executor.update_parameters(**params)
    return executor


def run_with_executor(config: RunConfig, options: ExecutorOptions) -> RunSummary:
    check_executor(options)
    # SLURM workers have the GPUs the submitting login node may lack: the plan takes their device.
    workers_device = None
    if options.kind == "slurm" and options.slurm_gpus_per_task and config.device == "auto":
        workers_device = "cuda"
    plan = plan_for_workers(config, workers_device or config.device)
    plan.config.out = str(Path(plan.config.out).expanduser().resolve())  # jobs may start in another folder
    run_dir = write_run_config(plan)
    world = options.workers
    try:  # what is missing, and whose: a rerun submits only the shards with missing cells
        summary = execute(plan.config, collect=True, plan=plan)
        log.info("every cell is already in the store: nothing to submit")
        return summary
    except RunIncompleteError as incomplete:
        ranks = sorted(incomplete.owners(world))
        log.info("%s", incomplete)
    token = uuid.uuid4().hex
    executor = _executor(options, run_dir / "workers" / "submitit")
    # Local jobs share this machine's cores: each takes cores / workers, also when a rerun submits fewer (the
    # same thread count keeps CPU numerics, hence records, equal). A SLURM job has its own allocation.
    on_node = world if options.kind == "local" else 1
    shards = [Shard(rank, world) for rank in ranks]
    jobs = executor.map_array(run_worker, [plan.config] * len(shards), shards, [token] * len(shards),
                              [on_node] * len(shards))
    log.info("submitted %d %s job(s) for workers %s of %d (logs: %s)", len(jobs), options.kind,
             ",".join(map(str, ranks)), world, run_dir / "workers" / "submitit")
    failed = wait_for_jobs(jobs, shards, options.poll_s)
    if failed:
        raise WorkersFailedError(
            f"{len(failed)} of {len(jobs)} worker(s) failed: " + "; ".join(failed)
            + ". Their finished cells are kept; run the same command again to compute only the missing ones")
    return collect(plan, read_reports(run_dir, world, token))  # counters: what this launch computed


def wait_for_jobs(jobs: list, shards: list[Shard], poll_s: float, every_s: float = 30.0) -> list[str]:
    """Wait for every job; returns one line per failed job (its error's last line, and its log file)."""
    last = time.monotonic()
    while not all(job.done() for job in jobs):
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            running = [str(s.rank) for s, j in zip(shards, jobs, strict=True) if not j.done()]
            log.info("waiting for workers: %d of %d finished (%s still running)", len(jobs) - len(running),
                     len(jobs), ",".join(running))
        time.sleep(poll_s)
    failed = []
    for shard, job in zip(shards, jobs, strict=True):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - a worker's failure is reported, whatever it was
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else type(error).__name__
            failed.append(f"{shard} ({reason}; log {job.paths.stderr})")
    return failed


def executor_options(args) -> ExecutorOptions:
    return dataclasses.replace(ExecutorOptions(kind=args.executor, workers=args.workers),
                               **{k: v for k, v in {
                                   "slurm_partition": args.slurm_partition,
                                   "slurm_gpus_per_task": args.slurm_gpus_per_task,
                                   "slurm_cpus_per_task": args.slurm_cpus_per_task,
                                   "slurm_time": args.slurm_time}.items() if v is not None})
