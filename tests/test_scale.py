"""One run over several processes (issue 13): sharding, claims, torchrun, merge, bad input.

The multi-process runs compare records with a one-process run of the same command: every column but the
timings must be equal, and the workers' computed counters must add up to the one-process run's. The
heavier runs (submitit's local executor, kill -9, concurrent commands) are in test_scale_slow.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.shard import Shard, launch_from_env, shard_of
from benchmark.store import CellClaims, CellStore
from conftest import REPO, run_cli

TIMING = ["prepare_seconds", "generate_seconds", "judge_seconds", "attack_seconds"]
RUN = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,uce", "--attack", "none",
       "--max-prompts", "4", "--max-benign", "3", "--steps", "2", "--batch-size", "4"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def records(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "records.parquet").drop(columns=TIMING)


def counters(stdout: str) -> dict[str, tuple[int, int]]:
    found = {}
    for line in stdout.splitlines():
        stage, _, rest = line.partition(": ")
        if stage in ("prepare", "attack", "generate", "judge") and rest.endswith(" cached"):
            computed, cached = rest.removesuffix(" cached").split(" computed, ")
            found[stage] = (int(computed), int(cached))
    return found


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one plain process. It also reports whether a plain run imported the scale extras."""
    out = tmp_path_factory.mktemp("one")
    code = ("import sys; from benchmark.cli import main; code = main(sys.argv[1:]); "
            "print('IMPORTED', [m for m in ('submitit', 'benchmark.harness.executors', 'torch.distributed.run') "
            "if m in sys.modules]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *RUN, "--out", str(out)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    return Path(lines[-2]), result.stdout


@pytest.fixture(scope="module")
def torchrun_two(tmp_path_factory):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path_factory.mktemp("two")
    result = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "benchmark", *RUN, "--out", str(out)],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1]), result


def test_shards_partition_the_prompts():
    texts = [f"a prompt number {i}" for i in range(200)]
    for world in (1, 2, 3, 8):
        owners = [[t for t in texts if Shard(rank, world).takes(t)] for rank in range(world)]
        assert sorted(sum(owners, [])) == sorted(texts)  # every prompt exactly once
        assert all(owners) or world > len(texts)
    assert shard_of("same text", 5) == shard_of("same text", 5)  # the same on every worker, every launch


def test_launch_is_read_from_the_launchers_environment():
    assert launch_from_env({}) is None and launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (launch.rank, launch.world, launch.local_rank, launch.local_world) == (3, 4, 1, 2)
    assert launch.shard == Shard(3, 4)


def test_a_claimed_cell_is_computed_once_and_a_dead_claim_is_gone(tmp_path):
    store = CellStore(tmp_path)
    done: set[str] = set()
    first = CellClaims(store, "generate", lambda k: k in done)
    second = CellClaims(store, "generate", lambda k: k in done)
    assert first.try_claim("k1")
    assert not second.try_claim("k1")  # held by another holder (another open file: as another process)
    first.release("k1")  # released without writing: the cell is free again
    assert second.try_claim("k1")
    done.add("k1")
    second.release("k1")
    assert not store.path("generate", "k1", "lock").exists()  # a finished cell leaves no lock file
    rounds = list(first.rounds(["k1", "k2", "k2"]))
    assert rounds == [["k2"]]


def test_a_killed_holder_releases_its_claim_at_once(tmp_path):
    """The OS drops a dead process's lock: no stale claim to time out."""
    code = ("import sys, time; from benchmark.store import CellClaims, CellStore; "
            f"c = CellClaims(CellStore({str(tmp_path)!r}), 'attack', lambda k: False); "
            "assert c.try_claim('k'); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    claims = CellClaims(CellStore(tmp_path), "attack", lambda k: False)
    assert not claims.try_claim("k")
    holder.kill()
    holder.wait()
    assert claims.try_claim("k")


def test_torchrun_two_ranks_write_the_same_records(one_process, torchrun_two):
    one_dir, one_stdout = one_process
    two_dir, two = torchrun_two
    assert two_dir.name == one_dir.name
    pd.testing.assert_frame_equal(records(one_dir), records(two_dir))
    assert (two_dir / "leaderboard.md").is_file()
    # Every cell computed exactly once: the two ranks' computed counters add up to one process's.
    reports = [json.loads(p.read_text()) for p in sorted((two_dir / "workers").glob("rank-*-of-2.json"))]
    assert [r["rank"] for r in reports] == [0, 1] and len({r["token"] for r in reports}) == 1
    reference = counters(one_stdout)
    for stage, (computed, _) in reference.items():
        assert sum(r["counters"][stage]["computed"] for r in reports) == computed, stage
    assert counters(two.stdout)["generate"][0] == reference["generate"][0]
    assert all(r["threads"] >= 1 for r in reports)
    assert not list((two_dir.parent / "cells").rglob("*.lock"))


def test_a_plain_run_imports_no_scale_extra(one_process):
    _, stdout = one_process
    assert "IMPORTED []" in stdout


def test_merge_rewrites_the_same_records_and_lists_missing_cells(torchrun_two, tmp_path):
    two_dir, _ = torchrun_two
    expected = records(two_dir)
    store = tmp_path / "store"
    shutil.copytree(two_dir.parent, store)
    run_dir = store / two_dir.name
    (run_dir / "records.parquet").unlink()
    merged = run_cli("merge", str(run_dir))
    assert merged.stdout.strip().splitlines()[-1] == str(run_dir)
    pd.testing.assert_frame_equal(records(run_dir), expected)
    # A worker that has not finished: merge computes nothing, names what is missing, exits 4.
    image = next((store / "cells" / "generate").rglob("*.json"))
    image.unlink()
    (run_dir / "records.parquet").unlink()
    incomplete = run_cli("merge", str(run_dir), check=False)
    assert incomplete.returncode == 4, incomplete.stderr
    assert "missing generate" in incomplete.stderr and "rerun the run's command" in incomplete.stderr
    assert not image.exists() and not (run_dir / "records.parquet").exists()


@pytest.mark.parametrize("flags,message", [
    (["--executor", "local", "--workers", "0"], "--workers must be >= 1"),
    (["--executor", "slurn", "--workers", "2"], "did you mean 'slurm'"),
    (["--workers", "2"], "--workers needs --executor"),
])
def test_bad_scale_flags_fail_in_one_line(flags, message, tmp_path):
    result = run_cli(*RUN, "--out", str(tmp_path), *flags, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cells").exists()


def test_slurm_without_sbatch_and_submitit_missing_say_what_to_do(tmp_path):
    env = {**ENV, "PATH": str(Path(sys.executable).parent)}  # no sbatch on this PATH
    result = subprocess.run([sys.executable, "-m", "benchmark", *RUN, "--out", str(tmp_path), "--executor", "slurm",
                             "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if "needs submitit" not in result.stderr:
        assert result.returncode == 2 and "sbatch is not on PATH" in result.stderr, result.stderr
    code = ("import sys; sys.modules['submitit'] = None; from benchmark.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, *RUN, "--out", str(tmp_path), "--executor", "local",
                             "--workers", "2"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and 'pip install -e ".[scale]"' in result.stderr, result.stderr


def test_a_worker_that_cannot_see_the_run_says_so(tmp_path):
    """A worker on a node whose --out is not the shared one finds no config.yaml there."""
    from benchmark.api.errors import ConfigError
    from benchmark.cli import build_parser, config_from_args
    from benchmark.harness.runner import execute

    config = config_from_args(build_parser().parse_args([*RUN, "--out", str(tmp_path)]))
    with pytest.raises(ConfigError, match="every worker sees"):
        execute(config, shard=Shard(1, 2))
