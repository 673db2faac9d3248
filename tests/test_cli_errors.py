"""Every bad input ends in a one-line error and exit 2, before anything is prepared or generated -- or in a
run that is right. Never a traceback, never a run that silently measured nothing.

A table of the cases a user probe found (names, option values, files, paths), plus a hypothesis fuzz of
sampler values and option assignments. The CLI is called in-process (``main([...])``) in ``--dry-run``, so
each case takes milliseconds and any exception other than a user error fails the test as a bug.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.cli import main

BASE = ["run", "--model", "tiny-random", "--task", "toy", "--dry-run"]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "empty_csv": tmp_path / "empty.csv",
        "no_column_csv": tmp_path / "nocol.csv",
        "bad_suite_key": tmp_path / "bad_key.yaml",
        "bad_suite_yaml": tmp_path / "bad_yaml.yaml",
        "suite_list": tmp_path / "list.yaml",
        "not_python": tmp_path / "plugin.txt",
        "syntax_plugin": tmp_path / "broken_plugin.py",
        "a_file": tmp_path / "a_file",
    }
    files["empty_csv"].write_text("")
    files["no_column_csv"].write_text("foo,bar\n1,2\n")
    files["bad_suite_key"].write_text("model: tiny-random\ndefences: [none]\n")
    files["bad_suite_yaml"].write_text("model: [tiny-random\n")
    files["suite_list"].write_text("- a\n- b\n")
    files["not_python"].write_text("x = 1\n")
    files["syntax_plugin"].write_text("def broken(:\n")
    files["a_file"].write_text("not a folder")
    return files


# (case id, extra args, words the one-line error must contain). {name} placeholders are tmp files.
CASES = [
    ("paraphrase threshold", ["--attack", "paraphrase", "--option", "attack:paraphrase.threshold=1.5"],
     ["threshold", "1.5"]),
    ("unlearndiff iterations -1", ["--attack", "unlearndiff", "--option", "attack:unlearndiff.iterations=-1"],
     ["iterations", "-1"]),
    ("unlearndiff iterations abc", ["--attack", "unlearndiff", "--option", "attack:unlearndiff.iterations=abc"],
     ["iterations", "abc"]),
    ("unlearndiff lr -1", ["--attack", "unlearndiff", "--option", "attack:unlearndiff.lr=-1"], ["lr"]),
    ("unlearndiff preset", ["--attack", "unlearndiff", "--option", "attack:unlearndiff.preset=bogus"],
     ["preset", "paper"]),
    ("ring-a-bell population 0", ["--attack", "ring-a-bell", "--option", "attack:ring-a-bell.population=0"],
     ["population"]),
    ("ring-a-bell population 1", ["--attack", "ring-a-bell", "--option", "attack:ring-a-bell.population=1"],
     ["population"]),
    ("ring-a-bell missing vector", ["--attack", "ring-a-bell", "--option",
                                    "attack:ring-a-bell.vector=/nonexistent/vector.pt"], ["vector"]),
    ("sld preset", ["--defense", "sld", "--option", "defense:sld.preset=maximum"], ["preset", "maximum"]),
    ("misspelt judge option", ["--option", "judge:nudenet.treshold=0.5"], ["treshold", "threshold"]),
    ("judge threshold 2", ["--option", "judge:nudenet.threshold=2"], ["threshold"]),
    ("misspelt attack option", ["--attack", "paraphrase", "--option", "attack:paraphrase.treshold=0.5"],
     ["treshold", "threshold"]),
    ("option for unknown attack", ["--option", "attack:paraphrse.threshold=0.5"], ["paraphrase"]),
    ("option bad syntax", ["--option", "threshold=0.5"], ["KIND:NAME.KEY=VALUE"]),
    ("option bad kind", ["--option", "model:x.y=1"], ["defense, attack or judge"]),
    ("guidance nan", ["--guidance", "nan"], ["guidance"]),
    ("guidance inf", ["--guidance", "inf"], ["guidance"]),
    ("guidance negative", ["--guidance", "-1"], ["guidance"]),
    ("steps 0", ["--steps", "0"], ["num_inference_steps"]),
    ("steps -3", ["--steps", "-3"], ["num_inference_steps"]),
    ("batch size 0", ["--batch-size", "0"], ["batch_size"]),
    ("images per prompt 0", ["--images-per-prompt", "0"], ["images_per_prompt"]),
    ("height 0", ["--height", "0"], ["height"]),
    ("max prompts -1", ["--max-prompts", "-1"], ["max_prompts"]),
    ("dtype", ["--dtype", "fp8"], ["dtype"]),
    ("device", ["--device", "tpu"], ["device"]),
    ("cuda absent", ["--device", "cuda"], ["cuda"]),
    ("unknown defense", ["--defense", "negative-promt"], ["negative-prompt"]),
    ("unknown attack", ["--attack", "paraphrse"], ["paraphrase"]),
    ("unknown task", ["--task", "toyy"], ["toy"]),
    ("task for another model", ["--task", "mini-object"], ["mini-object"]),
    ("name ../../x", ["--name", "../../x"], ["--name"]),
    ("name /abs/x", ["--name", "/abs/x"], ["--name"]),
    ("name a/b/c", ["--name", "a/b/c"], ["--name"]),
    ("name with space", ["--name", "a b"], ["--name"]),
    ("name dot", ["--name", ".hidden"], ["--name"]),
    ("out is a file", ["--out", "{a_file}"], ["--out"]),
    ("out under a file", ["--out", "{a_file}/runs"], ["--out"]),
    ("out in /proc", ["--out", "/proc/unlearn-arena-probe/runs"], ["--out"]),
    ("missing prompts file", ["--prompts", "/nonexistent/prompts.csv"], ["prompts.csv"]),
    ("missing benign file", ["--benign-prompts", "/nonexistent/benign.csv"], ["benign.csv"]),
    ("missing suite", ["--suite", "/nonexistent/suite.yaml"], ["suite"]),
    ("unknown suite", ["--suite", "smokey"], ["smoke"]),
    ("suite bad key", ["--suite", "{bad_suite_key}"], ["defences"]),
    ("suite bad yaml", ["--suite", "{bad_suite_yaml}"], ["parse"]),
    ("suite not a mapping", ["--suite", "{suite_list}"], ["mapping"]),
    ("plugin missing", ["--plugin", "/nonexistent/plugin.py"], ["plugin"]),
    ("plugin not python", ["--plugin", "{not_python}"], [".py"]),
    ("plugin syntax error", ["--plugin", "{syntax_plugin}"], ["broken_plugin.py"]),
    ("nudity without its file", ["--task", "nudity", "--data-dir", "{a_file}-nothing"], ["nudity.csv"]),
]


@pytest.mark.parametrize("case_id,extra,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error(tmp_path, capsys, out, case_id, extra, needles):
    files = _files(tmp_path)
    args = [a.format(**files) for a in extra]
    if "--out" not in args:
        args += ["--out", str(out)]
    code, _, err = run_main(capsys, *BASE, *args)
    assert_one_line_error(code, err, *needles)
    # nothing prepared, generated or written as a run: at most the empty store folder
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


def test_prompt_file_errors_are_one_line(tmp_path, capsys, out):
    files = _files(tmp_path)
    for name in ("empty_csv", "no_column_csv"):
        code, _, err = run_main(capsys, "run", "--model", "tiny-random", "--task", "toy", "--defense", "none",
                                "--attack", "none", "--prompts", str(files[name]), "--max-benign", "0",
                                "--steps", "1", "--out", str(out))
        assert_one_line_error(code, err, files[name].name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the /proc case covers it")
def test_read_only_out_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run_main(capsys, *BASE, "--out", str(folder))
        assert_one_line_error(code, err, "--out")
    finally:
        folder.chmod(0o755)


def test_other_commands(tmp_path, capsys):
    for args, needle in ((["report", str(tmp_path / "none")], "no such folder"),
                         (["compare", str(tmp_path / "a"), str(tmp_path / "b")], "no such folder"),
                         (["compare", str(tmp_path), str(tmp_path), "--confidence", "2"], "confidence"),
                         (["list", "--options", "paraphrse"], "paraphrase"),
                         (["list", "--options", "model:x"], "KIND")):
        code, _, err = run_main(capsys, *args)
        assert_one_line_error(code, err, needle)


def test_good_dry_run_passes(capsys, out):
    code, printed, err = run_main(capsys, *BASE, "--defense", "sld", "--attack", "paraphrase,unlearndiff",
                                  "--option", "attack:unlearndiff.iterations=3", "--option",
                                  "judge:nudenet.threshold=0.5", "--out", str(out))
    assert code == 0, err
    assert "unlearndiff" in printed and "iterations: 3" in printed


def test_option_listing(capsys):
    code, printed, _ = run_main(capsys, "list", "--options", "unlearndiff")
    assert code == 0
    assert "iterations" in printed and "preset" in printed and "paper" in printed
    code, printed, _ = run_main(capsys, "list", "--options", "judge:nudenet")
    assert code == 0 and "threshold" in printed


numbers = st.one_of(st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from(["abc", "", "1e9", "-0", "0x10"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--steps", "--guidance", "--height", "--width", "--batch-size", "--seed",
                             "--images-per-prompt", "--max-prompts", "--max-benign"]), value=numbers)
def test_fuzz_sampler_values(tmp_path, capsys, flag, value):
    try:
        code = main([*BASE, flag, str(value), "--out", str(tmp_path / "runs")])
    except SystemExit as exit_:  # argparse rejects a non-number for an int/float flag: its own one-line usage
        assert exit_.code == 2
        return
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert_one_line_error(code, err)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["attack:paraphrase.threshold", "attack:paraphrase.queries",
                               "attack:unlearndiff.iterations", "attack:unlearndiff.lr",
                               "attack:unlearndiff.tokens", "attack:unlearndiff.preset",
                               "attack:ring-a-bell.population", "attack:ring-a-bell.generations",
                               "defense:sld.preset", "defense:negative-prompt.text", "judge:nudenet.threshold",
                               "judge:nudenet.preset"]),
       value=st.one_of(numbers.map(str), st.text(max_size=12).filter(lambda s: "\n" not in s)))
def test_fuzz_option_values(tmp_path, capsys, target, value):
    kind, rest = target.split(":")
    name = rest.split(".")[0]
    selection = {"attack": ["--attack", name], "defense": ["--defense", name], "judge": []}[kind]
    code = main([*BASE, *selection, "--option", f"{target}={value}", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert_one_line_error(code, err)
