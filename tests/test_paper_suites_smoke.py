"""benchmarks/paper_suites_smoke.py: every paper suite end to end, then compare --published.

Planning, parsing and the problem checks without a model; the whole script on tiny-random (32 px, one prompt)
for two suites when the third-party prompt files are present (skipped otherwise). tiny-random proves the
plumbing only: its ASRs mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "paper_suites_smoke.py"


pss = load_script(SCRIPT)


def _args(**overrides) -> argparse.Namespace:
    base = dict(model="sd14-shaped", prompts=2, benign=1, steps=2, device="cpu", dtype="fp32",
                data_dir=Path("data"), out=Path("out"), clip="clip-folder", size=None, nudenet_model=None)
    return argparse.Namespace(**{**base, **overrides})


def _option_values(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--option"]


def test_every_paper_suite_is_found_and_each_component_gets_its_smallest_budget():
    suites = pss.paper_suites()
    assert {"paper-unlearndiff-nudity-sd14", "paper-safree-crossattack-nudity", "paper-mma-diffusion-sd14",
            "paper-ringabell-nudity-k16", "paper-ringabell-nudity-k38", "paper-ringabell-nudity-k77"} <= set(suites)
    config = pss.suite_config("paper-safree-crossattack-nudity")
    options = _option_values(pss.budget_flags(config))
    # the suite's white-box attacks and its trained defenses, each at the smoke budget
    for expected in ("attack:p4d.iterations=1", "attack:unlearndiff.iterations=1", "defense:esd-u.iterations=1",
                     "defense:rece.epochs=1", "defense:mace.steps=1", "attack:mma-diffusion.steps=1"):
        assert expected in options
    # nothing for components the suite does not run
    assert not any(o.startswith(("defense:esd-x.", "defense:advunlearn.", "attack:concept-inversion."))
                   for o in options)


def test_a_suite_whose_checkpoint_is_a_user_file_is_judged_with_the_wheels_unless_the_file_is_given():
    config = pss.suite_config("paper-unlearndiff-nudity-sd14")
    assert pss.judge_checkpoint(config) == "v3-best"
    command, checkpoint = pss.run_command("paper-unlearndiff-nudity-sd14", config, _args())
    assert checkpoint == "wheel-320n"
    assert "judge:nudenet.checkpoint=wheel-320n" in _option_values(command)
    assert "--height" not in command  # the suite's own 512 px

    command, checkpoint = pss.run_command("paper-unlearndiff-nudity-sd14", config,
                                          _args(nudenet_model=Path("best.onnx"), size=256))
    assert checkpoint == "v3-best"
    assert "judge:nudenet.model_path=best.onnx" in _option_values(command)
    assert command[command.index("--height") + 1] == "256" and command[command.index("--width") + 1] == "256"

    config = pss.suite_config("paper-ringabell-nudity-k16")  # the wheel's checkpoint: nothing to replace
    command, checkpoint = pss.run_command("paper-ringabell-nudity-k16", config, _args())
    assert checkpoint == "wheel-320n"
    assert not any(o.startswith("judge:nudenet.") for o in _option_values(command))


def test_the_closing_verdict_line_is_read_even_with_a_comma_inside_a_verdict():
    output = ("table ...\n0 reproduced, 3 within interval, not reproduced, 2 differs, 0 failed, 1 not run, "
              "10 not registered\nINFO reports.quality: a log line after it\n")
    assert pss.verdict_counts(output) == {"reproduced": 0, "within interval, not reproduced": 3, "differs": 2,
                                          "failed": 0, "not run": 1, "not registered": 10}
    assert pss.verdict_counts("error: the run's protocol differs\n") == {}


def test_machine_paths_in_a_command_are_replaced_by_their_roles(tmp_path):
    command = ["-m", "benchmark", "run", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "store"),
               "--option", f"judge:clip-score.model={tmp_path / 'clip'}", "--option",
               f"judge:nudenet.model_path={tmp_path / 'best.onnx'}"]
    places = pss.command_places(command)
    from sd_scale_smoke import portable  # on the path once the script is loaded; the one both scripts use

    text = portable(" ".join(command), places)
    assert text == ("-m benchmark run --data-dir <data> --out <store> --option judge:clip-score.model=<clip> "
                    "--option judge:nudenet.model_path=<nudenet>")
    assert pss.command_places(["--option", "judge:clip-score.model=tiny-random"]) == {}


def _result(**overrides):
    strict = pss.Comparison(["compare"], 2, "error: the run's protocol differs from ...: model: ...")
    allowed = pss.Comparison(["compare"], 1, "table\n0 reproduced, 1 differs")
    base = dict(suite="paper-x", command=[], exit_code=0, wall_seconds=1.0, run_dir="run", judge_checkpoint="w",
                published=True, strict=strict, allowed=allowed, verdicts={"reproduced": 0, "differs": 1})
    return pss.SuiteResult(**{**base, **overrides})


def test_problems_are_found_where_a_run_or_a_comparison_goes_wrong():
    assert _result().problems() == []
    assert _result(exit_code=1).problems() == ["paper-x: run exited 1"]
    assert _result(missing=["esd-u x p4d"]).problems() == ["paper-x: esd-u x p4d: no records"]
    failed = _result(failures=[{"defense": "uce", "attack": "p4d", "error": "RuntimeError: boom"}]).problems()
    assert failed == ["paper-x: uce x p4d: RuntimeError: boom"]
    # a comparison that accepted a run under another protocol is a defect of compare, caught here
    lenient = _result(strict=pss.Comparison(["compare"], 1, "table")).problems()
    assert lenient == ["paper-x: compare --published did not refuse a run under another protocol (exit 1)"]
    assert "printed no table" in _result(verdicts={}).problems()[0]
    # a suite without published numbers: both calls must say so
    unpublished = _result(published=False, strict=pss.Comparison(["compare", "--published", "s"], 2,
                                                                   "error: no published entries for suite 's'"),
                          allowed=pss.Comparison(["compare", "--allow-protocol-mismatch"], 2, "traceback"))
    assert unpublished.problems() == ["paper-x: compare --published --allow-protocol-mismatch: exit 2, not "
                                      "'no published entries'"]


def test_bad_arguments_fail_with_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pss.parse_args(["--data-dir", str(tmp_path / "absent")])
    assert "--data-dir must name the folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pss.parse_args(["--data-dir", str(tmp_path), "--prompts", "0"])
    assert "--prompts must be at least 1" in capsys.readouterr().err
    assert pss.main(["--data-dir", str(tmp_path), "--suite", "paper-nope"]) == 2
    assert "not a paper suite: paper-nope" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a run directory"):
        pss.from_run(tmp_path)


@pytest.mark.slow  # two suites run and compared through the CLI (~1 min): CI's slow tier runs it (benchmarks/ci_budget.py)
def test_two_suites_end_to_end_on_tiny_random_then_recorded_again_from_the_run(tmp_path, shared_data):
    """The whole script: the runs, both comparisons and the JSON. Plumbing only (tiny-random, 32 px)."""
    results = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, str(SCRIPT), "--data-dir", str(shared_data), "--model", "tiny-random", "--size", "32",
               "--clip", "tiny-random", "--prompts", "1", "--steps", "1", "--out", str(tmp_path / "out"),
               "--suite", "paper-ringabell-nudity-k16,paper-mma-diffusion-sd14", "--results", str(results)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    report = json.loads(results.read_text())
    assert report["problems"] == []
    by_suite = {s["suite"]: s for s in report["suites"]}

    k16 = by_suite["paper-ringabell-nudity-k16"]
    assert k16["exit_code"] == 0 and k16["published"] and k16["judge_checkpoint"] == "wheel-320n"
    assert k16["cells"]["none"]["ring-a-bell"] == 1 and k16["cells"]["esd-u"]["ring-a-bell"] == 1
    assert k16["strict"]["exit_code"] == 2 and "model: published 'sd-1.4', run 'tiny-random'" in k16["strict"]["output"]
    assert sum(k16["verdicts"].values()) == 2  # the two published cells (none and ESD at K=16), each with a verdict
    assert k16["verdicts"]["reproduced"] == 0  # never called a reproduction under another protocol
    assert set(k16["stage_usage"]) >= {"prepare", "attack", "generate", "judge"}
    assert k16["run_config"]["model"] == "tiny-random" and k16["run_config"]["max_prompts"] == 1
    assert k16["run_config"]["sampler"]["height"] == 32 and k16["run_config"]["sampler"]["num_inference_steps"] == 1

    mma = by_suite["paper-mma-diffusion-sd14"]
    assert not mma["published"] and set(mma["cells"]) == {"none", "esd-u", "uce", "sld", "safree", "rece"}
    assert all(row["none"] == 2 for row in mma["cells"].values())  # one attack prompt + one benign per defense
    assert mma["cells"]["none"] == {"none": 2}
    assert str(tmp_path) not in results.read_text()  # machine paths are replaced by their roles

    again = tmp_path / "again.json"
    run_dir = k16["run_dir"].replace("<store>", str(tmp_path / "out" / "store"))  # the JSON names it by its role
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from-run", run_dir, "--results", str(again)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(again.read_text())
    assert report["settings"].startswith("recorded from existing runs")
    recorded = report["suites"][0]
    assert recorded["run_config"] == k16["run_config"]
    assert recorded["exit_code"] is None and recorded["cells"] == k16["cells"]
    assert recorded["verdicts"] == k16["verdicts"] and recorded["command"][:4] == ["-m", "benchmark", "run", "--suite"]
