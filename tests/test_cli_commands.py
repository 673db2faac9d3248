"""The CLI's shape: one module per command, one flag per config key (short forms kept as aliases), ``-o/--out``
for where every command writes, and one exit-code table (README) for every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import COMMANDS, build_parser, main
from benchmark.cli._common import EXIT_BUG, EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
DRY = ["run", "--model", "tiny-random", "--task", "toy", "--dry-run"]


def test_every_command_is_a_module_that_registers_its_own_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(["run", "list", "report", "compare", "export", "transfer", "merge", "ci"])
    for module in COMMANDS:
        name = module.__name__.rsplit(".", 1)[-1]
        parser = sub.choices[name]
        assert parser.get_default("handler") is module.handle, name


@pytest.mark.parametrize("command", ["run", "report", "export", "transfer", "ci"])
def test_out_means_where_the_command_writes(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    out = next(a for a in sub.choices[command]._actions if "--out" in a.option_strings)
    assert "-o" in out.option_strings and out.dest == "out"
    assert out.help.startswith("where this command writes"), out.help


@pytest.mark.parametrize(("long", "short", "value", "key"), [
    ("--num-inference-steps", "--steps", "7", "num_inference_steps"),
    ("--guidance-scale", "--guidance", "3.5", "guidance_scale"),
])
def test_a_config_key_flag_and_its_alias_give_the_same_config(capsys, tmp_path, long, short, value, key):
    outputs = []
    for flag in (long, short):
        assert main([*DRY, "--out", str(tmp_path), flag, value]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert f"{key}: {value}" in outputs[0]


def test_a_bug_exits_70_with_its_traceback_and_bad_input_exits_2(capsys, monkeypatch, tmp_path):
    import benchmark.cli.list as list_command

    def broken(args):
        raise RuntimeError("an unexpected state")

    monkeypatch.setattr(list_command, "print_options", lambda target: broken(None))
    assert main(["list", "--options", "uce"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an unexpected state" in err and "a bug" in err
    assert main([*DRY, "--out", str(tmp_path), "--defense", "no-such-defense"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:")


def test_list_options_shows_the_per_model_presets(capsys):
    assert main(["list", "--options", "unlearndiff"]) == 0
    out = capsys.readouterr().out
    assert "Presets" in out
    assert "mini (sd-mini, tiny-random)" in out and "paper (any other model)" in out


def test_reports_ci_is_an_alias_of_benchmark_ci():
    alias = subprocess.run([sys.executable, "-m", "reports.ci", "--help"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    direct = subprocess.run([sys.executable, "-m", "benchmark", "ci", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert alias.returncode == direct.returncode == 0, alias.stderr
    assert alias.stdout == direct.stdout and "usage: python -m benchmark ci" in alias.stdout
