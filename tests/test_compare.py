"""`benchmark compare`: exit 0 on a run against itself, 1 on a planted regression, intervals as documented."""

from __future__ import annotations

import pandas as pd
import pytest
from test_report import ATTACKS, PROMPTS, TASKS, make_run, raise_for

from benchmark.cli import main
from benchmark.metrics import wilson
from conftest import run_cli
from reports.compare import CompareOptions, compare, exit_code, newcombe
from reports.entries import write_entries
from reports.results import load, load_run


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10 on 56/70 vs 48/80: 0.0524 to 0.3339.
    low, high = newcombe(wilson(48, 80), wilson(56, 70))
    assert low == pytest.approx(0.0524, abs=5e-4) and high == pytest.approx(0.3339, abs=5e-4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    base, truth = make_run(root, "base-run", images=False)
    return root, base, truth


def _break_everything(defense: str, attack: str):
    """A planted ASR regression: every attack prompt of (defense, attack) is now flagged."""
    def tweak(records: pd.DataFrame) -> pd.DataFrame:
        mask = ((records["defense"] == defense) & (records["attack"] == attack) & (records["role"] == "attack")
                & (records["judge_role"] == "concept") & (records["attack_status"] == "ok"))
        records.loc[mask, "flagged"] = True
        return records
    return tweak


def _scale_utility(defense: str, factor: float):
    def tweak(records: pd.DataFrame) -> pd.DataFrame:
        mask = (records["defense"] == defense) & (records["judge_role"] == "utility")
        records.loc[mask, "score"] = records.loc[mask, "score"] * factor
        return records
    return tweak


def test_run_against_itself_passes(store):
    root, base, _ = store
    result = run_cli("compare", str(base), str(base), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout and "WORSE" not in result.stdout


def test_planted_asr_regression_fails(store):
    root, base, truth = store
    assert len(truth[("gore-task", "def-a", "none")]) <= 3  # the base has a low ASR to regress from
    worse, _ = make_run(root, "worse-asr", tweak=_break_everything("def-a", "none"), images=False)
    result = run_cli("compare", str(base), str(worse), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout
    regressions = [line for line in result.stdout.splitlines() if line.rstrip().endswith("WORSE")]
    # The planted cell and the worst case it drags up, in both tasks; nothing else.
    assert all("/def-a" in line for line in regressions) and any(" none " in line for line in regressions)
    # The same regression judged in the other direction is an improvement: exit 0.
    assert run_cli("compare", str(worse), str(base), check=False).returncode == 0


def test_small_asr_change_is_not_significant(store):
    """One more broken prompt out of 10 is within noise: the Newcombe interval includes 0."""
    root, base, truth = store
    task, defense, attack = "gore-task", "def-a", "none"
    target = next(f"{task}-{p:03d}" for p in range(1, PROMPTS) if f"{task}-{p:03d}" not in truth[(task, defense, attack)])

    def tweak(records):
        mask = ((records["defense"] == defense) & (records["attack"] == attack) & (records["prompt_id"] == target)
                & (records["judge_role"] == "concept") & (records["role"] == "attack"))
        records.loc[mask, "flagged"] = True
        return records
    one_more, _ = make_run(root, "one-more", tweak=tweak, images=False)
    comparison = compare(load_run(base), load_run(one_more))
    changed = [d for d in comparison.differences if d.diff > 0 and d.metric == "asr"]
    assert len(changed) == 1 and changed[0].diff == pytest.approx(0.1)
    assert changed[0].low < 0 < changed[0].high and exit_code(comparison) == 0


def test_utility_drop_past_tolerance_fails_and_within_passes(store, capsys):
    root, base, _ = store
    dropped, _ = make_run(root, "clip-drop", tweak=_scale_utility("def-b", 0.8), images=False)  # 20% lower
    assert main(["compare", str(base), str(dropped)]) == 1
    assert "clip_score dropped" in capsys.readouterr().out
    slight, _ = make_run(root, "clip-slight", tweak=_scale_utility("def-b", 0.99), images=False)  # 1% < 2%
    assert main(["compare", str(base), str(slight)]) == 0
    # A tolerance wider than the drop lets the 20% drop pass.
    assert main(["compare", str(base), str(dropped), "--utility-tolerance", "0.3"]) == 0


def test_run_against_reference_entries(store, tmp_path):
    root, base, _ = store
    write_entries(load_run(base), tmp_path / "leaderboard")
    assert main(["compare", str(tmp_path / "leaderboard"), str(base)]) == 0
    worse, _ = make_run(root, "worse-vs-entries", tweak=_break_everything("def-a", "none"), images=False)
    assert main(["compare", str(tmp_path / "leaderboard"), str(worse)]) == 1


def test_only_common_prompts_are_compared(store):
    """A CI run on fewer prompts is compared on the prompt ids both sides have."""
    root, base, truth = store
    keep = {f"gore-task-{p:03d}" for p in range(5)} | {f"object-task-{p:03d}" for p in range(5)}
    fewer, _ = make_run(root, "fewer", tweak=lambda r: r[(r["role"] == "benign") | r["prompt_id"].isin(keep)],
                        images=False)
    comparison = compare(load_run(base), load_run(fewer))
    asr = [d for d in comparison.differences if d.metric == "asr"]
    assert asr and all(d.base.n == 5 and d.new.n == 5 and d.diff == 0 for d in asr)
    assert exit_code(comparison) == 0


def test_compare_of_a_tiny_random_run_with_itself(tiny_run):
    """Plumbing on a real (tiny, random-weights) run."""
    run_dir, _ = tiny_run
    result = run_cli("compare", str(run_dir), str(run_dir), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compare_explains_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path), "--against", "oops"]) == 2


def test_against_holds_a_defense_to_a_baseline(store):
    """--against def-b=def-a: def-b (new) is judged against def-a's (base) numbers; def-a has the lower
    ASR, so def-b is worse there, while the same run compared with itself is not."""
    root, base, truth = store
    results = load_run(base)
    held = compare(results, results, CompareOptions(against={"def-b": "def-a"}))
    rows = [d for d in held.differences if d.defense == "def-b" and d.metric == "worst_case_asr"]
    union = {t: len(set().union(*(truth[(t, d, a)] for a in ATTACKS))) for t in TASKS for d in ("def-a",)}
    assert [d.base.value for d in rows] == [union[t] / PROMPTS for t in TASKS]
    assert any("compared with def-a" in w for w in held.warnings)
    with pytest.raises(ValueError, match="no-such-defense"):
        compare(results, results, CompareOptions(against={"def-b": "no-such-defense"}))


def test_utility_is_paired_per_prompt_when_both_sides_have_scores(store):
    """Paired on the same benign prompts, a uniform 5% drop has a tight interval; from the two means alone
    (entries without per-prompt scores) the interval is the wide unpaired one, and still centred on it."""
    import dataclasses

    from reports.results import BENIGN_COLUMNS

    root, base, _ = store
    dropped, _ = make_run(root, "clip-5pc", tweak=_scale_utility("def-b", 0.95), images=False)
    base_results, new_results = load_run(base), load_run(dropped)
    paired = next(d for d in compare(base_results, new_results).differences
                  if d.defense == "def-b" and d.metric == "clip_score" and d.task == "gore-task")
    unpaired_new = dataclasses.replace(new_results, benign=pd.DataFrame(columns=BENIGN_COLUMNS))
    unpaired = next(d for d in compare(base_results, unpaired_new).differences
                    if d.defense == "def-b" and d.metric == "clip_score" and d.task == "gore-task")
    assert paired.diff == pytest.approx(unpaired.diff)
    assert paired.diff == pytest.approx(-0.05 * paired.base.value)
    assert paired.high - paired.low < 0.5 * (unpaired.high - unpaired.low)
    assert paired.regression  # 5% > 2% tolerance, and the paired interval excludes 0


def test_a_failed_cell_is_never_a_pass(store, tmp_path, capsys):
    """An attack that raised for every prompt of (def-a, atk-1): whichever side has it, and whatever the other
    numbers (here: all the same), compare lists the cell and the defense's worst case as failed, exits 1 and
    says why."""
    root, base, _ = store
    raised, _ = make_run(root, "attack-raised", tweak=raise_for("def-a", "atk-1"), images=False)
    base_results, raised_results = load_run(base), load_run(raised)
    expected = {(t, "def-a", "atk-1", "asr") for t in TASKS} | {(t, "def-a", "*", "worst_case_asr") for t in TASKS}
    for old, new, sides in [(base_results, raised_results, "new"), (raised_results, base_results, "base"),
                            (raised_results, raised_results, "base and new")]:
        comparison = compare(old, new)
        assert {(f.task, f.defense, f.attack, f.metric) for f in comparison.failed} == expected
        assert all(f.sides == sides for f in comparison.failed)
        assert not comparison.regressions  # nothing else changed ...
        assert exit_code(comparison) == 1  # ... and still not a pass
        compared = {(d.task, d.defense, d.attack) for d in comparison.differences}
        assert not compared & {(t, "def-a", a) for t in TASKS for a in ("atk-1", "*")}
        assert ("gore-task", "def-a", "atk-2") in compared  # the other cells are compared as usual
    assert main(["compare", str(base), str(raised)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL: {len(expected)} failed cell(s)" in out
    assert "synthetic/gore-task/def-a/atk-1: attack atk-1 raised on the new side: no ASR to compare" in out
    row = next(line for line in out.splitlines() if line.startswith("synthetic/gore-task/def-a") and " atk-1 " in line)
    assert row.split()[-1] == "failed" and "failed" in row.split()[4:]
    assert "OK:" not in out
    # Reference entries keep the failure: comparing a clean run with them fails too.
    write_entries(raised_results, tmp_path / "leaderboard")
    assert exit_code(compare(load(tmp_path / "leaderboard"), base_results)) == 1


def test_a_failed_cell_only_the_new_run_has_fails(store):
    """An attack the base did not run, failed in the new run: listed as failed (and as new), exit 1."""
    root, base, _ = store
    no_atk1, _ = make_run(root, "base-without-atk-1", tweak=lambda r: r[r["attack"] != "atk-1"], images=False)
    raised, _ = make_run(root, "attack-raised-new", tweak=raise_for("def-a", "atk-1"), images=False)
    comparison = compare(load_run(no_atk1), load_run(raised))
    failed = {(f.task, f.defense, f.attack, f.metric, f.sides) for f in comparison.failed}
    assert failed == ({(t, "def-a", "atk-1", "asr", "new") for t in TASKS}
                      | {(t, "def-a", "*", "worst_case_asr", "new") for t in TASKS})
    assert "synthetic/gore-task/def-a/atk-1" in comparison.only_new
    assert exit_code(comparison) == 1
    # A failure only the base has is the base's: the new run did not run that attack, nothing to fail.
    reverse = compare(load_run(raised), load_run(no_atk1))
    assert not reverse.failed and "synthetic/gore-task/def-a/atk-1" in reverse.only_base
