"""FD / KID / CMMD on sd-mini's trained world, through the CLI: a defense that wrecks benign images must come
out worse than one that leaves them alone, with intervals that say so.

sd-mini's weights are trained (not random), so these are real measurements of its world: SLD at its 'max'
preset pushes every benign image away from the undefended model's (its CLIP score already says so), while UCE
edits only the concept's cross-attention keys and values. The features are clip-mini's (the world's own image
encoder): "FD" here is a Frechet distance in that space, not an FID.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from reports.results import load_run

RUN = ["run", "--model", "sd-mini", "--task", "mini-object", "--defense", "none,uce,sld", "--attack", "none",
       "--option", "defense:sld.preset=max", "--max-prompts", "4", "--max-benign", "20"]


@pytest.mark.slow  # 120 sd-mini images through the CLI (~40 s): CI's slow tier runs it (benchmarks/ci_budget.py)
def test_sld_max_is_worse_than_uce_by_fd_kid_and_cmmd_with_disjoint_intervals(tmp_path):
    done = run_cli(*RUN, "--out", str(tmp_path), timeout=900)
    board = load_run(Path(done.stdout.strip().splitlines()[-1])).board
    quality = board[board["metric"].isin(["fd", "kid", "cmmd"])].set_index(["defense", "metric"])
    assert set(quality.index) == {(d, m) for d in ("uce", "sld") for m in ("fd", "kid", "cmmd")}
    for metric in ("fd", "kid", "cmmd"):
        uce, sld = quality.loc[("uce", metric)], quality.loc[("sld", metric)]
        assert uce["n"] == sld["n"] == 20  # every benign prompt, matched to the undefended model's image
        for row in (uce, sld):
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
        # worse by the interval, not only by the point estimate (measured: FD 0.06 vs 0.60, KID -0.002 vs
        # 0.005, CMMD 0.03 vs 3.0, each pair of 95% intervals disjoint)
        assert sld["ci_low"] > uce["ci_high"], (metric, uce.to_dict(), sld.to_dict())
