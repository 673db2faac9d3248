"""benchmarks/gpu_check.py keeps working between GPU sessions: ``--tiny`` runs every section on tiny-random on
the CPU (as a user runs it, in its own process); the guards (a failing part, a failing section, the time
budget), the README block and the GPU defaults are checked apart, without a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


gpu_check = load_script(SCRIPT)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One ``--tiny`` run: (its JSON, the process, the README copy it rewrote)."""
    out = tmp_path_factory.mktemp("gpu-check")
    readme = out / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out / "result.json"),
                           "--readme", str(readme)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return json.loads((out / "result.json").read_text()), proc, readme.read_text()


def test_tiny_run_fills_every_section_with_numbers_or_reasons(tiny):
    result, _, _ = tiny
    assert result["mode"] == "tiny" and result["settings"]["model"] == "tiny-random"
    assert list(result["sections"]) == list(gpu_check.SECTIONS)
    for name, section in result["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert section["figures"], name
        for figure in section["figures"]:
            assert "error" not in figure, (name, figure)
            if figure["value"] is None:  # never a silent gap: a skip or a reason
                assert figure.get("skipped") or figure.get("reason"), (name, figure)
            else:
                assert _numeric(figure["value"]) and figure["definition"] and figure["unit"], (name, figure)
    env = result["environment"]
    assert env["device"] == "cpu" and env["packages"]["torch"] and env["packages"]["diffusers"] and "git" in env


def test_tiny_run_has_each_check(tiny):
    result, _, _ = tiny
    figures = {(f["check"], f["figure"]): f for s in result["sections"].values() for f in s["figures"]}
    checks = {f["check"] for f in figures.values()}
    for batch in gpu_check.TINY.batches:
        assert figures[(f"harness vs raw diffusers, batch {batch}", "harness / raw")]["value"] > 0
    for name in gpu_check.inference_time_defenses():
        assert f"defense overhead: {name}" in checks
    assert {"negative-prompt", "sld", "safree", "saferedir"} <= set(gpu_check.inference_time_defenses())
    ratio = [f for f in figures.values() if f["check"].startswith("UnlearnDiff") and f["unit"] == "ratio"]
    assert len(ratio) == 1 and ratio[0]["value"] > 0
    assert any(f["check"].startswith("ESD-x") and f["unit"] == "s/iteration" and _numeric(f["value"])
               for f in figures.values())
    for attack in gpu_check.ATTACKS_MEASURED:
        [figure] = [f for f in figures.values() if f["check"].startswith(f"attack {attack},")]
        assert figure["seconds"] > 0


def test_on_cpu_memory_is_null_with_the_reason_never_zero(tiny):
    result, _, _ = tiny
    memory = [f for s in result["sections"].values() for f in s["figures"] if f["unit"] == "GiB"]
    assert len(memory) == len(gpu_check.TINY.memory_batches) + len(gpu_check.ATTACKS_MEASURED) + 1  # + ESD's
    for figure in memory:
        assert figure["value"] is None and "CUDA" in figure["reason"]


def test_table_is_printed_and_replaces_the_readme_block_only(tiny, tmp_path, capsys):
    result, proc, readme = tiny
    assert "| check | figure | value |" in proc.stdout and "harness / raw" in proc.stdout
    original = (REPO / "README.md").read_text()
    before, after = original.split(gpu_check.BEGIN)[0], original.split(gpu_check.END)[1]
    block = readme.split(gpu_check.BEGIN)[1].split(gpu_check.END)[0]
    assert readme.startswith(before) and readme.endswith(after)
    assert "| check | figure | value |" in block and "Unmeasured" not in block
    saved = tmp_path / "result.json"  # the table renders again from the JSON alone
    saved.write_text(json.dumps(result))
    gpu_check.main(["--from-json", str(saved)])
    assert "| harness vs raw diffusers, batch 1 | harness / raw |" in capsys.readouterr().out


def test_a_failing_part_or_section_is_recorded_and_the_run_goes_on(monkeypatch):
    def parts(b, rec):
        with gpu_check.guarded(rec, "one"):
            raise ValueError("bad part")
        rec.add("two", "f", 2.0, "s", "d")

    def broken(b, rec):
        rec.add("before", "f", 1.0, "s", "d")
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu_check.SECTIONS, "throughput", ("T", parts))
    monkeypatch.setitem(gpu_check.SECTIONS, "esd", ("E", broken))
    out = gpu_check.run_section("throughput", None, gpu_check.Clock(60), None)
    assert out["status"] == "ok"
    assert out["figures"][0]["error"] == "ValueError: bad part" and out["figures"][1]["value"] == 2.0
    out = gpu_check.run_section("esd", None, gpu_check.Clock(60), None)
    assert out["status"] == "error" and out["error"] == "RuntimeError: boom" and "Traceback" in out["traceback"]
    assert out["figures"][0]["value"] == 1.0  # what came before the failure is kept


def test_the_budget_cuts_a_running_section_and_skips_the_rest(monkeypatch, tmp_path):
    def slow(b, rec):
        rec.add("first", "f", 1.0, "s", "d")
        time.sleep(30)

    monkeypatch.setitem(gpu_check.SECTIONS, "esd", ("E", slow))
    began = time.perf_counter()
    out = gpu_check.run_section("esd", None, gpu_check.Clock(0.5), None)
    assert time.perf_counter() - began < 10
    assert out["status"] == "cut" and "time budget" in out["cut"] and out["figures"][0]["value"] == 1.0
    # A spent budget loads no model and skips every section, each with the reason.
    result = gpu_check.main(["--tiny", "--budget-s", "0", "--out", str(tmp_path / "r.json"),
                      "--threads", str(torch.get_num_threads())])
    assert json.loads((tmp_path / "r.json").read_text())["sections"] == result["sections"]
    for section in result["sections"].values():
        assert section["status"] == "skipped" and "time budget" in section["skipped"]


def test_readme_holds_one_block_with_the_placeholder():
    text = (REPO / "README.md").read_text()
    assert text.count(gpu_check.BEGIN) == 1 and text.count(gpu_check.END) == 1
    block = text.split(gpu_check.BEGIN)[1].split(gpu_check.END)[0].strip()
    assert block == ("Unmeasured: no GPU machine has run `benchmarks/gpu_check.py` yet; its figures will replace "
                     "this line.")
    assert gpu_check.replace_readme_block(f"a\n{gpu_check.BEGIN}\nold\n{gpu_check.END}\nb", "new") == f"a\n{gpu_check.BEGIN}\nnew\n{gpu_check.END}\nb"
    with pytest.raises(ValueError, match="gpu-check"):
        gpu_check.replace_readme_block("no markers", "new")


def test_gpu_defaults_name_registered_components_with_valid_options():
    """What only a GPU session runs must not rot either: its model, task, defenses and attack budgets."""
    import attacks  # noqa: F401  (registers the attacks)
    import defenses  # noqa: F401
    from benchmark.api.registry import ATTACKS, DEFENSES, MODELS, TASKS

    assert (gpu_check.GPU.model, gpu_check.GPU.device, gpu_check.GPU.dtype) == ("sd14-shaped", "cuda", "fp16")
    assert gpu_check.GPU.model in MODELS and gpu_check.GPU.task in TASKS and gpu_check.GPU.batches == (8, 16)
    for profile in (gpu_check.GPU, gpu_check.TINY):
        DEFENSES.get("saferedir")(**profile.saferedir_training)
        assert set(profile.attack_options) == set(gpu_check.ATTACKS_MEASURED)
        for name, options in profile.attack_options.items():
            ATTACKS.get(name)(**options)  # options are validated when the attack is built
    args = gpu_check.parse_args([])
    assert gpu_check.resolve_profile(args) == gpu_check.GPU and args.budget_s == 420
    assert gpu_check.output_path(args.out, "gpu", "2026-01-02") == REPO / "benchmarks" / "results" / "gpu-2026-01-02.json"
    with pytest.raises(SystemExit, match="13 GB"):  # the full-size model is refused on the CPU
        gpu_check.main(["--device", "cpu"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--tiny"):
            gpu_check.main([])


def test_help_says_how_to_run_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--tiny" in text and "--budget-s" in text and "--readme" in text and "one run" in text


def test_a_rerun_of_some_sections_keeps_the_files_other_sections(tmp_path):
    out = str(tmp_path / "r.json")
    threads = str(torch.get_num_threads())
    gpu_check.main(["--tiny", "--budget-s", "0", "--out", out, "--threads", threads])
    again = gpu_check.main(["--tiny", "--budget-s", "0", "--out", out, "--threads", threads, "--sections", "esd"])
    assert set(again["sections"]) == set(gpu_check.SECTIONS)
    assert any("kept from the earlier run" in note and "throughput" in note for note in again["notes"])
