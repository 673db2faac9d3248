"""benchmarks/sd_scale_smoke.py: the full-size smoke matrix.

The default suite runs the script's plumbing on tiny-random (512 px, a few components, one torch thread) and
its planning and reporting without a model. The ``sdscale`` tier (``pytest -m sdscale``, run by ``.ci/run``)
runs the cross form on sd14-shaped: every registered defense and attack end to end at SD-1.4's size on the
CPU. Random weights: these prove shapes, memory and plumbing, never an ASR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "sd_scale_smoke.py"


smoke = load_script(SCRIPT)


def _run(out, *args: str, timeout: int = 1500) -> tuple[subprocess.CompletedProcess, dict]:
    results = out / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--results", str(results), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert results.is_file(), f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc, json.loads(results.read_text())


def test_cross_form_covers_every_component_and_full_form_every_pair():
    defenses, attacks, deciding = smoke.registered()
    assert {"none", "saferedir", "esd-x", "checkpoint"} <= set(defenses) and "saferedir" in deciding
    cross = smoke.planned_pairs("cross", defenses, attacks, deciding)
    assert {d for d, _ in cross} == set(defenses)  # every defense runs ...
    assert {a for _, a in cross} == set(attacks)  # ... and every attack
    assert ("saferedir", "switch-aware") in cross and ("uce", "switch-aware") not in cross
    full = smoke.planned_pairs("full", defenses, attacks, deciding)
    assert cross < full
    assert len(full) == len(defenses) * len(attacks) - (len(defenses) - len(deciding))  # switch-aware: n/a


def test_every_budgeted_component_and_option_is_registered():
    """A renamed component or option would silently run at its defaults (hours at full size)."""
    from benchmark.api.registry import ATTACKS, DEFENSES

    for (kind, name), options in smoke.BUDGETS.items():
        registry = DEFENSES if kind == "defense" else ATTACKS
        registry.get(name)(**options)  # raises on an unknown option or a value out of range


def test_status_reads_records_failures_and_skips(tmp_path):
    import pandas as pd

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame({"defense": ["none", "uce", "uce"], "attack": ["none", "none", "p4d"]}).to_parquet(
        run_dir / "records.parquet")
    result = smoke.RunResult("x", ["uce"], ["p4d", "switch-aware"], [], 3, 1.0, str(run_dir),
                             notes=["attack switch-aware skipped against uce: it exposes no decision"],
                             failures=[{"defense": "uce", "attack": "p4d", "error": "RuntimeError: boom"}])
    planned = {("none", "none"), ("uce", "none"), ("uce", "p4d"), ("none", "p4d")}
    status = smoke.cell_status([result], planned)
    assert status["uce"] == {"none": "ok", "p4d": "failed: RuntimeError: boom",
                             "switch-aware": "n/a: it exposes no decision"}
    assert status["none"] == {"none": "ok", "p4d": "missing"}
    table = smoke.markdown(status, ["none", "p4d", "switch-aware"])
    assert "| uce | ok | failed | n/a |" in table and "| none | ok | missing |  |" in table


def test_cross_form_runs_end_to_end_on_tiny_random(tmp_path):
    """Plumbing on tiny-random (at its own 32 px: its VAE downsamples by 2 only, so 512 px would mean 256 x 256
    latents and attention over 65,536 positions): a published checkpoint, an inference-time defense, the prompt-set
    replay of a file, Ring-A-Bell with the script's pairs file, and switch-aware where it does not apply."""
    proc, report = _run(tmp_path, "--model", "tiny-random", "--size", "32", "--clip", "tiny-random", "--prompts", "1",
                        "--benign", "0", "--steps", "1", "--defense", "checkpoint,sld",
                        "--attack", "prompt-set,ring-a-bell,switch-aware")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{report['problems']}"
    matrix = report["matrix"]
    for defense in ("none", "checkpoint", "sld"):
        assert matrix[defense]["none"] == "ok" and matrix[defense]["prompt-set"] == "ok", defense
        assert matrix[defense]["switch-aware"].startswith("n/a"), defense
    assert matrix["none"]["ring-a-bell"] == "ok"
    assert report["problems"] == [] and report["resolution"] == 32
    assert [r["name"] for r in report["runs"]] == ["defenses", "attacks"]
    for run in report["runs"]:
        assert run["exit_code"] == 0
        generate = run["stage_usage"]["generate"]
        assert generate["computed"] > 0 and generate["seconds"] > 0 and generate["peak_rss_mib"] > 100
    assert "| checkpoint | ok |" in proc.stdout
    text = (tmp_path / "result.json").read_text()  # committable: no path of this machine
    assert str(tmp_path) not in text and str(REPO) not in text and "<out>/store/smoke-defenses-" in text


@pytest.mark.sdscale
def test_a_weight_edit_and_the_adaptive_attack_end_to_end_on_sd14_shaped(tmp_path):
    """CI's full-size check: UCE (a closed-form edit of SD-1.4's 16 cross-attention K/V projections) and adaptive
    UnlearnDiff (gradients through the defended 860 M-parameter UNet and the ViT-L/14 text encoder, with a pristine
    copy of the base model for its target) every pair end to end on sd14-shaped (CPU, fp32, 256 px, 1 step, 1
    prompt), 7.8 GB at its peak (all processes). Every other component at full size is the script's matrix, run by hand
    (README: `python benchmarks/sd_scale_smoke.py`, 25 minutes at 256 px, 21 GB at ESD-u's peak); its results
    are committed under benchmarks/results/. Random weights: shapes, memory and the path, never a rate."""
    proc, report = _run(tmp_path, "--form", "full", "--defense", "uce", "--attack", "unlearndiff", "--steps", "1",
                        "--prompts", "1", "--benign", "0", "--size", "256", timeout=3600)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{report['problems']}"
    assert report["resolution"] == 256 and report["model"] == "sd14-shaped"
    assert {d: set(row) for d, row in report["matrix"].items()} == {"none": {"none", "unlearndiff"},
                                                                     "uce": {"none", "unlearndiff"}}
    assert all(status == "ok" for row in report["matrix"].values() for status in row.values()), report["matrix"]
    (run,) = report["runs"]
    assert run["stage_usage"]["prepare"]["computed"] == 2  # the undefended model (nothing to build) and UCE's edit
    assert run["stage_usage"]["generate"]["peak_rss_mib"] > 4000  # an 860 M-parameter UNet is resident
