"""benchmarks/ci_budget.py: CI's tiers, each timed with the peak memory of all its processes, and the budget
table scaled to the reference machine (3 raw sd-mini images/s). Plumbing and arithmetic only: no tier of the
real CI runs here."""

from __future__ import annotations

import re
import time

from conftest import REPO, load_script

budget = load_script(REPO / "benchmarks" / "ci_budget.py")


def test_ci_runs_the_readme_test_command_then_every_other_tier():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text().replace("pip install -q ", "pip install ")  # CI's pip is quiet
    test_command = re.search(r"```bash\n(python3 -m venv .*pytest)\n```", readme).group(1)
    assert test_command in ci  # verbatim but for pip's -q
    assert test_command.endswith(" && " + budget.TIERS[0].command) and budget.TIERS[0].name == "default"
    lines = [line for line in ci.splitlines() if not line.startswith("#")]
    assert "python benchmarks/ci_budget.py --skip default" in lines  # every other tier, and only through it
    assert lines.index(test_command) < lines.index("python benchmarks/ci_budget.py --skip default")
    assert len({t.name for t in budget.TIERS}) == len(budget.TIERS)


def test_the_numeric_tier_keeps_the_default_exclusions():
    """`-m` on the command line replaces pyproject's `-m`: the tier must exclude slow/gpu/sdscale itself."""
    (tier,) = [t for t in budget.TIERS if t.name == "numeric-default-kernels"]
    assert tier.env == {"ATEN_CPU_CAPABILITY": "default"}
    assert all(f"not {marker}" in tier.command for marker in ("slow", "gpu", "sdscale"))


def test_a_tier_reports_its_exit_code_and_the_memory_of_every_process_it_starts():
    # The shell starts a child that holds 300 MiB: the peak counts it, though it is not the shell itself.
    holder = "python3 -c 'import time; b = bytearray(300 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.5)'"
    started = time.perf_counter()
    result = budget.run_tier(budget.Tier("probe", f"{holder} && exit 3", "a probe"), interval=0.05)
    assert result.exit_code == 3 and result.name == "probe"
    assert 1.4 <= result.seconds <= time.perf_counter() - started + 0.1
    assert 0.29 <= result.peak_gb < 1.0  # the child's 300 MiB (0.29 GB), plus interpreters of tens of MiB


def test_the_table_scales_minutes_to_the_reference_machine():
    results = [budget.TierResult("a", 0, 600.0, 2.0), budget.TierResult("b", 1, 300.0, 5.5)]
    table = budget.table(results, raw=6.0)  # a machine twice as fast as the reference
    assert "| a | 0 | 10.0 | 20.0 | 2.0 |" in table
    assert "| b | 1 | 5.0 | 10.0 | 5.5 |" in table
    assert "| all | 1 | 15.0 | 30.0 | 5.5 |" in table
    assert "6.00 raw sd-mini images/s" in table
    assert "| a | 0 | 10.0 | ? | 2.0 |" in budget.table(results[:1], raw=None)


def test_bad_tier_names_are_refused_with_the_list(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        budget.main(["--only", "sdscal"])
    assert exit_info.value.code == 2
    assert "no tier sdscal; the tiers are default, numeric-default-kernels" in capsys.readouterr().err
    assert budget.main(["--skip", "default", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "sdscale:" in listed and "default:" not in listed
