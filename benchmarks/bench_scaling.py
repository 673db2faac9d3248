"""Cells per second of one run with 1 process and with N processes (torchrun), each in a fresh store.

    python benchmarks/bench_scaling.py                      # CPU: 1 vs 2 processes, sd-mini
    python benchmarks/bench_scaling.py --device cuda        # one process per GPU: per-GPU throughput

Cells are the images generated plus the scores judged (the stages that scale with prompts); the wall time
includes loading the model in every process and rank 0's merge, as a user sees it. On a machine with
few cores expect little gain on CPU (each process gets its share of the cores); the point there is that
the N-process run writes the same records (checked here too) with each cell computed once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING = ["prepare_seconds", "generate_seconds", "judge_seconds", "attack_seconds"]


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - began, result.stdout


def cells(stdout: str) -> int:
    """Generated images + judge scores computed, from the counters the run prints."""
    total = 0
    for line in stdout.splitlines():
        stage, _, rest = line.partition(": ")
        if stage in ("generate", "judge") and " computed, " in rest:
            total += int(rest.split(" computed, ")[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: one process per GPU")
    parser.add_argument("--processes", type=int, help="processes of the parallel run (default: 2 on CPU, "
                        "every GPU with --device cuda)")
    parser.add_argument("--model", default="sd-mini")
    parser.add_argument("--task", default="mini-object")
    parser.add_argument("--max-prompts", type=int, default=16)
    parser.add_argument("--max-benign", type=int, default=16)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here")
        processes = args.processes or torch.cuda.device_count()
    else:
        processes = args.processes or 2
    job = ["run", "--model", args.model, "--task", args.task, "--defense", "none,negative-prompt", "--attack", "none",
           "--max-prompts", str(args.max_prompts), "--max-benign", str(args.max_benign), "--device", args.device]
    if args.steps:
        job += ["--steps", str(args.steps)]
    if args.batch_size:
        job += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)  # each worker takes its share of the cores itself
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    with tempfile.TemporaryDirectory() as scratch:
        one_s, one_out = run([sys.executable, "-m", "benchmark", *job, "--out", f"{scratch}/one"], env)
        many_s, many_out = run([torchrun, "--nproc-per-node", str(processes), "-m", "benchmark", *job,
                                "--out", f"{scratch}/many"], env)
        import pandas as pd

        one_dir, many_dir = Path(one_out.strip().splitlines()[-1]), Path(many_out.strip().splitlines()[-1])
        one_records = pd.read_parquet(one_dir / "records.parquet").drop(columns=TIMING)
        many_records = pd.read_parquet(many_dir / "records.parquet").drop(columns=TIMING)
        same = one_records.equals(many_records)
        # Scores are floats of float images: compare every other column exactly and scores by their gap.
        same_decisions = one_records.drop(columns=["score"]).equals(many_records.drop(columns=["score"]))
        score_gap = float((one_records["score"] - many_records["score"]).abs().max())
    n_one, n_many = cells(one_out), cells(many_out)
    print(f"{args.model} / {args.task} on {args.device}, {os.cpu_count()} CPU cores; cells = images + scores")
    print(f"1 process:   {n_one} cells in {one_s:6.1f} s = {n_one / one_s:7.2f} cells/s")
    print(f"{processes} processes: {n_many} cells in {many_s:6.1f} s = {n_many / many_s:7.2f} cells/s"
          + (f" ({n_many / many_s / processes:.2f} cells/s per GPU)" if args.device.startswith("cuda") else ""))
    print(f"ratio {processes} / 1 process: {(n_many / many_s) / (n_one / one_s):.2f}x; each cell computed once: "
          f"{n_one == n_many}; records identical (all columns but timings): {same}")
    print(f"every column but timings and scores identical (prompts, seeds, decisions: flagged, retained, blocked): "
          f"{same_decisions}; largest score difference {score_gap:.2e}")
    if not same:
        print("  (images on CPU are equal only up to float rounding across batch compositions and thread counts, "
              "and the two runs differ in both here; --batch-size 1 with OMP_NUM_THREADS=1 makes them identical, "
              "as tests/test_scale.py checks)")


if __name__ == "__main__":
    main()
