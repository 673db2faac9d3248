"""Multi-process runs that take minutes on two cores: submitit's local executor with 3 workers, kill -9 of
a worker then the same command again, two commands at once on one store. `.ci/run` runs them
(`pytest -m slow tests/test_scale_slow.py`)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_scale import ENV, RUN, counters, records

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("submitit", reason='the scale extra is not installed: pip install -e ".[scale]"')

# Long enough to be killed mid-run: 30 sampler steps, one image per batch.
LONG = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,uce", "--attack", "none",
        "--max-prompts", "8", "--max-benign", "8", "--steps", "30", "--batch-size", "1"]


def last_line(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def images(out: Path) -> set[str]:
    return {p.name for p in (out / "cells" / "generate").rglob("*.json")} if out.exists() else set()


def test_submitit_local_three_workers_write_the_same_records(tmp_path):
    one = run_cli(*RUN, "--out", str(tmp_path / "one"))
    three = run_cli(*RUN, "--out", str(tmp_path / "three"), "--executor", "local", "--workers", "3")
    pd.testing.assert_frame_equal(records(last_line(one)), records(last_line(three)))
    for stage, (computed, _) in counters(one.stdout).items():
        assert counters(three.stdout)[stage][0] == computed, stage
    assert len(list((last_line(three) / "workers").glob("rank-*-of-3.json"))) == 3


def test_kill_9_of_a_worker_then_the_same_command_completes_without_recomputing(tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "benchmark", *LONG, "--out", str(out), "--executor", "local", "--workers", "3"]
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 600
    while victim is None and time.time() < deadline and process.poll() is None:
        submitted = glob.glob(f"{out}/*/workers/submitit/*_submitted.pkl")
        if len(submitted) == 3 and len(images(out)) >= 4:
            for path in sorted(submitted):
                # The local executor's job id is the pid of its controller; the worker is the controller's child.
                job = Path(path).name.split("_")[0]
                children = Path(f"/proc/{job}/task/{job}/children")
                if not list(Path(path).parent.glob(f"{job}_0_result.pkl")) and children.exists():
                    pids = children.read_text().split()
                    if pids:
                        victim = int(pids[0])
                        break
        time.sleep(0.1)
    assert victim is not None, "the run finished before a worker could be killed; make it longer"
    os.kill(victim, signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 4, stderr
    assert "1 of 3 worker(s) failed" in stderr and "run the same command again" in stderr
    kept = images(out)

    again = run_cli(*LONG, "--out", str(out), "--executor", "local", "--workers", "3")
    assert "submitted 1 local job(s)" in again.stderr  # only the killed worker's share
    total = len(images(out))
    assert counters(again.stdout)["generate"][0] == total - len(kept)  # nothing finished was drawn again
    fresh = run_cli(*LONG, "--out", str(tmp_path / "fresh"))
    pd.testing.assert_frame_equal(records(last_line(again)), records(last_line(fresh)))


def test_two_commands_at_once_on_one_store_prepare_each_artifact_once(tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "benchmark", *RUN, "--out", str(out)]
    runs = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    found = [counters(stdout) for stdout, _ in outputs]
    one = run_cli(*RUN, "--out", str(tmp_path / "one"))
    reference = counters(one.stdout)
    for stage in ("prepare", "attack", "generate", "judge"):  # each cell computed by one of the two
        assert found[0][stage][0] + found[1][stage][0] == reference[stage][0], (stage, found)
    pd.testing.assert_frame_equal(records(last_line(one)), records(Path(outputs[0][0].strip().splitlines()[-1])))
