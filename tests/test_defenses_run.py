"""The issue-6 defenses through the CLI on tiny-random: options from the command line, the prepare stage's
cached artifacts (an ESD / UCE delta inside the artifact directory) and a rerun that reuses them.
Random weights: plumbing only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from conftest import run_cli

RUN = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "esd-x,uce,sld", "--attack", "none",
       "--max-prompts", "2", "--max-benign", "2", "--steps", "2", "--batch-size", "4",
       "--option", "defense:esd-x.iterations=2", "--option", "defense:esd-x.ddim_steps=2",
       "--option", "defense:sld.preset=max"]


def test_weight_edit_and_sld_defenses_run_and_cache(tmp_path):
    first = run_cli(*RUN, "--out", str(tmp_path))
    run_dir = Path(first.stdout.strip().splitlines()[-1])
    records = pd.read_parquet(run_dir / "records.parquet")
    assert set(records["defense"]) == {"none", "esd-x", "uce", "sld"}
    prepared = {}
    for done in (tmp_path / "cells" / "prepare").rglob("prepared.json"):
        meta = json.loads(done.read_text())
        prepared[meta["defense"]["name"]] = (done.parent, meta)
    assert prepared["esd-x"][1]["iterations"] == 2 and prepared["esd-x"][1]["prepare_seconds"] > 0
    assert (prepared["esd-x"][0] / "esd_delta.safetensors").is_file()
    assert (prepared["uce"][0] / "uce_delta.safetensors").is_file()
    second = run_cli(*RUN, "--out", str(tmp_path))
    assert Path(second.stdout.strip().splitlines()[-1]) == run_dir
    assert "prepare: 0 computed, 4 cached" in second.stdout
    assert "generate: 0 computed" in second.stdout


def test_all_defenses_leave_out_those_that_need_user_data(tmp_path):
    from benchmark.harness.config import RunConfig
    from benchmark.harness.resolve import resolve

    config = resolve(RunConfig(model="tiny-random", tasks=["toy"], defenses=["all"], attacks=["none"])).config
    assert "checkpoint" not in config.defenses and {"none", "esd-x", "saferedir", "sld"} <= set(config.defenses)
    # asked for by name (with its options), it runs
    import torch
    from safetensors.torch import save_file

    checkpoint = tmp_path / "x.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(checkpoint))  # readable: its keys are checked at prepare
    named = resolve(RunConfig(model="tiny-random", tasks=["toy"], defenses=["checkpoint"], attacks=["none"],
                              defense_options={"checkpoint": {"path": str(checkpoint)}})).config
    assert "checkpoint" in named.defenses
