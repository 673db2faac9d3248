"""End-to-end runs on the tiny random model. They prove plumbing (files, caching, resume, errors),
not the quality of any defense: the model's weights are random."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.records import COLUMNS, LEADERBOARD_COLUMNS
from conftest import REPO, TINY_RUN, run_cli

TIMING = ["prepare_seconds", "generate_seconds", "judge_seconds", "attack_seconds"]


def test_run_writes_every_file(tiny_run):
    run_dir, result = tiny_run
    for name in ("config.yaml", "provenance.json", "records.parquet", "leaderboard.csv", "leaderboard.md"):
        assert (run_dir / name).is_file(), name
    records = pd.read_parquet(run_dir / "records.parquet")
    assert list(records.columns) == COLUMNS
    # 2 defenses x (4 attack + 3 benign prompts) x 2 judges.
    assert len(records) == 2 * 7 * 2
    assert set(records["defense"]) == {"none", "negative-prompt"}
    assert set(records["judge"]) == {"nudenet", "clip-score"}
    assert records["judge_preset"].notna().all() and records["judge_version"].notna().all()
    assert (records.loc[records["judge"] == "nudenet", "judge_threshold"] > 0).all()
    images = records["image_path"].dropna().unique()
    assert len(images) == 2 * 7
    store_root = run_dir.parent
    assert all((store_root / p).is_file() for p in images)
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert list(board.columns) == LEADERBOARD_COLUMNS
    asr = board[(board["metric"] == "asr")]
    assert set(asr["defense"]) == {"none", "negative-prompt"} and (asr["n"] == 4).all()
    assert {"worst_case_asr", "clip_score", "generate_seconds_per_image"} <= set(board["metric"])
    assert "ASR(none)" in (run_dir / "leaderboard.md").read_text()
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    assert "generate: 14 computed, 0 cached" in result.stdout
    # Each stage's cost in this process: seconds and peak resident memory (CUDA peak: None on CPU).
    usage = json.loads((run_dir / "provenance.json").read_text())["stage_usage"]
    assert set(usage) == {"prepare", "attack", "generate", "judge"}
    assert usage["generate"]["computed"] == 14 and usage["generate"]["seconds"] > 0
    assert all(u["peak_rss_mib"] > 50 and u["cuda_peak_mib"] is None for u in usage.values() if u["computed"])
    assert "cost: prepare " in result.stdout


def test_rerun_generates_nothing(tiny_run):
    run_dir, first = tiny_run
    again = run_cli(*TINY_RUN, "--out", str(run_dir.parent))
    assert again.stdout.strip().splitlines()[-1] == str(run_dir)
    assert "generate: 0 computed, 14 cached" in again.stdout
    assert "judge: 0 computed, 28 cached" in again.stdout
    assert "prepare: 0 computed, 2 cached" in again.stdout


def test_new_defense_reuses_the_undefended_cells(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    args = [a if a != "none,negative-prompt" else "none" for a in TINY_RUN]
    result = run_cli(*args, "--out", str(run_dir.parent))
    assert "generate: 0 computed, 7 cached" in result.stdout


def test_unknown_defense_exits_nonzero_with_did_you_mean(tmp_path):
    result = run_cli("run", "--model", "tiny-random", "--defense", "negative-promt", "--out", str(tmp_path),
                     check=False)
    assert result.returncode != 0
    assert "Did you mean 'negative-prompt'" in result.stderr


def test_malformed_prompt_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('prompt,evaluation_seed\n"a church",1\n"a house",notanumber\n')
    result = run_cli("run", "--model", "tiny-random", "--prompts", str(bad), "--out", str(tmp_path), check=False)
    assert result.returncode != 0
    assert "bad.csv:3" in result.stderr


def test_prompt_file_replaces_task_prompts(tmp_path):
    prompts = tmp_path / "mine.txt"
    prompts.write_text("a chapel on a hill\na cathedral at dusk\n")
    result = run_cli("run", "--model", "tiny-random", "--prompts", str(prompts), "--max-benign", "1",
                     "--steps", "2", "--out", str(tmp_path))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    records = pd.read_parquet(run_dir / "records.parquet")
    attack = records[records["role"] == "attack"]
    assert set(attack["source_prompt"]) == {"a chapel on a hill", "a cathedral at dusk"}
    assert set(attack["prompt_set"]) == {"mine.txt"}


def test_defense_from_a_plugin_file_outside_the_repo(tmp_path):
    plugin = tmp_path / "elsewhere" / "blur_defense.py"
    plugin.parent.mkdir()
    plugin.write_text(textwrap.dedent('''
        """A user's defense in one file: a filter that blocks every image."""
        from benchmark.api.registry import DEFENSES
        from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind

        class BlockAll(DefendedPipeline):
            def blocked(self, images):
                return [True] * len(images)

        @DEFENSES.register("block-all")
        class BlockAllDefense(Defense):
            """Blocks every image (a plugin example)."""
            kind = DefenseKind.FILTER
            def apply(self, model, task, artifact_dir):
                return BlockAll(model, self, task)
    '''))
    listed = run_cli("list", "defenses", "--plugin", str(plugin))
    assert "block-all" in listed.stdout and "[plugin blur_defense.py]" in listed.stdout
    result = run_cli("run", "--model", "tiny-random", "--defense", "block-all", "--plugin", str(plugin),
                     "--max-prompts", "2", "--max-benign", "1", "--steps", "2", "--out", str(tmp_path / "runs"))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    records = pd.read_parquet(run_dir / "records.parquet")
    mine = records[records["defense"] == "block-all"]
    assert len(mine) > 0 and mine["blocked"].all()
    assert not mine.loc[mine["judge_role"] == "concept", "flagged"].any()


def test_list_shows_every_kind():
    result = run_cli("list")
    for kind in ("defenses", "attacks", "judges", "tasks", "prompt-sets", "models", "suites"):
        assert f"{kind} (" in result.stdout
    for name in ("negative-prompt", "prompt-set", "nudenet", "clip-score", "tiny-random", "sd-1.4", "nudity"):
        assert name in result.stdout


def test_hub_model_offline_fails_fast_with_instructions(tmp_path):
    env_start = time.perf_counter()
    result = run_cli("run", "--model", "sd-1.4", "--out", str(tmp_path), check=False, timeout=120)
    assert result.returncode == 2
    assert "CompVis/stable-diffusion-v1-4" in result.stderr and "--model /path/to/folder" in result.stderr
    assert time.perf_counter() - env_start < 60


def test_local_pipeline_folder_as_model(tmp_path):
    from benchmark.models.tiny_random import build_tiny_pipeline

    folder = tmp_path / "my-pipeline"
    build_tiny_pipeline().save_pretrained(folder)
    result = run_cli("run", "--model", str(folder), "--task", "toy", "--max-prompts", "1", "--max-benign", "1",
                     "--steps", "2", "--height", "32", "--width", "32", "--out", str(tmp_path / "runs"))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir.name.startswith("my-pipeline-")
    assert pd.read_parquet(run_dir / "records.parquet")["model"].eq("my-pipeline").all()


def _records_without_timing(run_dir: Path) -> pd.DataFrame:
    records = pd.read_parquet(run_dir / "records.parquet").drop(columns=TIMING)
    return records.sort_values(["defense", "attack", "role", "prompt_id", "judge"]).reset_index(drop=True)


def test_resume_after_sigkill_gives_the_same_records(tmp_path):
    """Kill a run mid-generation with SIGKILL, rerun it, and compare with an uninterrupted run.
    Timing columns are measurements and differ between any two runs; everything else must match."""
    args = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,negative-prompt",
            "--max-prompts", "4", "--max-benign", "4", "--steps", "30", "--batch-size", "1"]  # 16 images, one at a time
    killed_out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "benchmark", *args, "--out", str(killed_out)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    generated = 0
    while time.time() < deadline:
        generated = len(list((killed_out / "cells" / "generate").rglob("*.json"))) if killed_out.exists() else 0
        if generated >= 2:
            break
        if process.poll() is not None:
            pytest.fail("the run finished before it could be killed; make it longer")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= generated < 16, generated
    assert not (list(killed_out.glob("*/records.parquet"))), "killed before records were written"

    resumed = run_cli(*args, "--out", str(killed_out))
    computed = int(resumed.stdout.split("generate: ")[1].split(" computed")[0])
    assert computed <= 16 - generated  # the killed run's images were reused
    fresh = run_cli(*args, "--out", str(tmp_path / "fresh"))
    resumed_dir = Path(resumed.stdout.strip().splitlines()[-1])
    fresh_dir = Path(fresh.stdout.strip().splitlines()[-1])
    assert resumed_dir.name == fresh_dir.name
    pd.testing.assert_frame_equal(_records_without_timing(resumed_dir), _records_without_timing(fresh_dir))
