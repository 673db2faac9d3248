"""Shared fixtures. No test touches the network: the hub is switched off for the whole session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNLEARN_ARENA_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m benchmark`` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd or REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def load_script(path: Path):
    """A script under ``benchmarks/`` imported as a module of its own name, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party prompt files not present at {SHARED_DATA}")
    return SHARED_DATA


TINY_RUN = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,negative-prompt",
            "--attack", "none", "--max-prompts", "4", "--max-benign", "3", "--steps", "3", "--batch-size", "4"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One finished tiny-random run, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli(*TINY_RUN, "--out", str(out))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return run_dir, result


def _task(name: str):
    from benchmark.api.registry import TASKS

    return TASKS.get(name)


TOY = _task("toy")  # the plumbing task (data file benchmark/tasks/toy.yaml)
NUDITY = _task("nudity")
