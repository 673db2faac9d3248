"""`benchmark report`: every artifact from a run, numbers that match the records, blurring, entries.

Most tests use a synthetic run written here (records whose outcomes are chosen, so every number has a
known right answer, plus small PNGs in a cell store); one uses the shared tiny-random run (plumbing only:
random weights say nothing about quality).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.metrics import wilson
from benchmark.records import COLUMNS
from conftest import run_cli
from reports import grids
from reports.entries import load_entries, write_entries
from reports.latex import escape, render_latex
from reports.leaderboard import render_markdown
from reports.plots import pareto_front
from reports.results import load_run
from reports.tables import build_tables

TASKS = {"gore-task": ("mini-detector", "gore"), "object-task": ("mini-detector", "object:heart")}
DEFENSES = ["none", "def-a", "def-b"]
ATTACKS = ["none", "atk-1", "atk-2"]
PROMPTS = 10
BENIGN = 6
# Probability that a prompt is broken, per defense and attack: defenses are ordered, attacks help.
BREAK_P = {"none": 0.9, "def-a": 0.2, "def-b": 0.5}
ATTACK_BONUS = {"none": 0.0, "atk-1": 0.3, "atk-2": 0.1}
CLIP = {"none": 30.0, "def-a": 26.0, "def-b": 29.0}


def _checkerboard(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    tile = (np.indices((32, 32)).sum(axis=0) // 4 % 2).astype(np.uint8) * 255
    colour = rng.integers(0, 255, size=3)
    image = np.stack([tile * (c / 255) for c in colour], axis=-1).astype(np.uint8)
    return Image.fromarray(image)


def make_run(root: Path, name: str = "synthetic-0000", seed: int = 0, tweak=None,
             images: bool = True) -> tuple[Path, dict[tuple[str, str, str], set[str]]]:
    """A run directory under the store ``root``; returns it and the truth: (task, defense, attack) ->
    broken prompt ids. ``tweak(records)`` may edit the records before they are written; ``images=False``
    skips writing the PNGs (records still name them)."""
    rng = random.Random(seed)
    rows, truth = [], {}
    image_index = 0
    for task, (judge, preset) in TASKS.items():
        for defense in DEFENSES:
            defense_key = f"{task}-{defense}-key"
            done = root / "cells" / "prepare" / defense_key[:2] / defense_key / "prepared.json"
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"prepare_seconds": 0.0 if defense == "none" else 12.5}))
            for attack in ATTACKS:
                broken = set()
                for p in range(PROMPTS):
                    prompt_id = f"{task}-{p:03d}"
                    hit = rng.random() < min(1.0, BREAK_P[defense] + ATTACK_BONUS[attack])
                    failed = attack == "atk-2" and p == 0  # one failed prompt: stays in n, not broken
                    hit = hit and not failed
                    if hit:
                        broken.add(prompt_id)
                    rows += _cell_rows(root, task, judge, preset, defense, defense_key, attack, "attack", prompt_id,
                                       hit, failed, image_index, rng, images)
                    image_index += 1
                truth[(task, defense, attack)] = broken
            for b in range(BENIGN):
                rows += _cell_rows(root, task, judge, preset, defense, defense_key, "none", "benign",
                                   f"{task}-benign-{b}", False, False, image_index, rng, images)
                image_index += 1
    records = pd.DataFrame(rows, columns=COLUMNS)
    if tweak is not None:
        records = tweak(records)
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    records.to_parquet(run_dir / "records.parquet", index=False)
    (run_dir / "config.yaml").write_text("model: synthetic\ndefense_options: {}\nattack_options: {}\n")
    (run_dir / "provenance.json").write_text(json.dumps({
        "git": {"commit": "0123456789abcdef", "dirty": False}, "created_utc": "2026-01-01T00:00:00+00:00",
        "command": ["benchmark/__main__.py", "run", "--defense", "def-a"], "packages": {"torch": "2.13.0"}}))
    return run_dir, truth


def _cell_rows(root, task, judge, preset, defense, defense_key, attack, role, prompt_id, hit, failed, index, rng,
               images=True):
    image_path = f"cells/generate/{index % 100:02d}/img{index:05d}.png"
    if images:
        file = root / image_path
        file.parent.mkdir(parents=True, exist_ok=True)
        _checkerboard(index).save(file)
    base = {
        "run_id": "synthetic", "model": "synthetic", "model_key": "synthetic-key", "task": task,
        "defense": defense, "defense_key": defense_key, "attack": attack, "role": role,
        "prompt_set": f"{task}-{role}", "prompt_id": prompt_id, "source_prompt": f"prompt {prompt_id}",
        "adversarial_prompt": f"{attack} version of {prompt_id}", "truncated": False,
        "attack_status": "failed" if failed else "ok", "attack_message": "", "attack_seconds": 0.5 if attack != "none" else 0.0,
        "attack_queries": 3, "seed": 1, "image_index": 0, "guidance_scale": 5.0, "num_inference_steps": 2,
        "height": 32, "width": 32, "image_path": image_path,
        "generate_seconds": (1.5 if defense == "def-b" else 1.0) * (1 + 0.05 * rng.random()), "blocked": False,
        "judge_version": "1", "judge_threshold": 0.5, "judge_weights_hash": "h", "judge_seconds": 0.01,
    }
    concept = {**base, "judge": judge, "judge_preset": preset, "judge_role": "concept",
               "score": 0.9 if hit else 0.1, "flagged": hit}
    utility = {**base, "judge": "clip-mini", "judge_preset": None, "judge_role": "utility",
               "score": CLIP[defense] + rng.gauss(0, 1.0), "flagged": None}
    return [concept, utility]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return make_run(root)


def test_report_numbers_match_the_truth(synthetic):
    run_dir, truth = synthetic
    results = load_run(run_dir)
    tables = {t.task: t for t in build_tables(results.board, results.judges)}
    assert set(tables) == set(TASKS)
    for (task, defense, attack), broken in truth.items():
        estimate = tables[task].get(defense, f"asr:{attack}")
        assert estimate.n == PROMPTS
        assert estimate.value == pytest.approx(len(broken) / PROMPTS)
        expected = wilson(len(broken), PROMPTS)
        assert estimate.ci_low == pytest.approx(expected.ci_low) and estimate.ci_high == pytest.approx(expected.ci_high)
    for task in TASKS:
        for defense in DEFENSES:
            union = set().union(*(truth[(task, defense, a)] for a in ATTACKS))
            assert tables[task].value(defense, "worst_case_asr") == pytest.approx(len(union) / PROMPTS)
        # Costs: prepare time read from the artifact, def-b generates 1.5x slower than none.
        assert tables[task].value("def-a", "prepare_seconds") == 12.5
        assert tables[task].value("def-b", "generation_overhead") == pytest.approx(1.5, rel=0.06)
        assert tables[task].value("def-a", "generation_overhead") == pytest.approx(1.0, rel=0.06)
        # Two non-"none" attacks at 0.5 s per prompt each.
        assert tables[task].value("def-a", "attack_seconds_per_prompt") == pytest.approx(1.0)
        assert tables[task].value("def-a", "clip_score") == pytest.approx(CLIP["def-a"], abs=1.5)


def test_report_cli_writes_every_artifact(synthetic):
    run_dir, truth = synthetic
    out = run_dir.parent / "report-out"
    result = run_cli("report", str(run_dir), "--out", str(out), "--grid-count", "1")
    assert result.stdout.strip().splitlines()[-1] == str(out / "report.html")
    expected = ["leaderboard.md", "leaderboard.csv", "leaderboard_wide.csv", "leaderboard.tex", "report.html"]
    for task in TASKS:
        expected += [f"plots/heatmap_{task}.png", f"plots/heatmap_{task}.pdf", f"plots/bars_{task}.png",
                     f"plots/bars_{task}.pdf"]
        assert len(list(out.glob(f"grids/grid_{task}_*.png"))) == 1 == len(list(out.glob(f"grids/grid_{task}_*.pdf")))
    expected += ["plots/scatter_robustness_utility.png", "plots/scatter_robustness_utility.pdf"]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.rglob("*.png"):
        with Image.open(png) as image:
            assert image.width >= 300 and image.height >= 150, png
    assert all(pdf.read_bytes().startswith(b"%PDF") for pdf in out.rglob("*.pdf"))

    wide = pd.read_csv(out / "leaderboard_wide.csv")
    row = wide[(wide["task"] == "gore-task") & (wide["defense"] == "def-a")].iloc[0]
    assert row["asr_atk-1"] == pytest.approx(len(truth[("gore-task", "def-a", "atk-1")]) / PROMPTS)
    assert row["asr_atk-1_n"] == PROMPTS

    markdown = (out / "leaderboard.md").read_text()
    assert "ASR(atk-1)" in markdown and "worst-case ASR" in markdown and "gen. overhead" in markdown
    assert "1 of 10 prompts could not be processed by attack 'atk-2'" in markdown

    latex = (out / "leaderboard.tex").read_text()
    begins, ends = re.findall(r"\\begin\{table\*?\}", latex), re.findall(r"\\end\{table\*?\}", latex)
    assert len(begins) == len(TASKS) == len(ends)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert latex.count(rule) == len(TASKS)
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    value_line = next(line for line in body.splitlines() if line.startswith("def-a"))
    columns = len(build_tables(load_run(run_dir).board)[0].columns)
    assert value_line.count("&") == columns  # every row has one cell per column

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not fetch anything"
    assert page.count("<table class=\"board\"") == len(TASKS)
    assert page.count("data:image/png;base64,") == 2 * len(TASKS) + 1 + len(TASKS)  # plots, scatter, grids
    assert "0123456789abcdef" in page  # provenance: the commit


def test_pareto_front():
    points = [("a", 30.0, 80.0), ("b", 25.0, 10.0), ("c", 24.0, 20.0), ("d", 29.0, 50.0), ("e", 30.0, 90.0)]
    # c is beaten by b on both axes; e by a (same utility, higher ASR).
    assert sorted(pareto_front(points)) == ["a", "b", "d"]


def _detail(image: Image.Image) -> float:
    """Mean absolute difference of horizontally neighbouring pixels: what a blur removes."""
    array = np.asarray(image, dtype=float)
    return float(np.abs(np.diff(array, axis=1)).mean())


def test_grid_blurs_only_flagged_images_of_a_nudity_judge(synthetic):
    run_dir, truth = synthetic
    results = load_run(run_dir)
    gore_prompt = min(truth[("gore-task", "none", "none")])
    _, _, cells, _ = grids.grid_cells(results.records, results.store_root, "gore-task", gore_prompt)
    _, _, clear, _ = grids.grid_cells(results.records, results.store_root, "gore-task", gore_prompt, unblurred=True)
    for key, cell in cells.items():
        sharp, shown = _detail(clear[key].image), _detail(cell.image)
        assert cell.blurred == cell.flagged
        assert (shown < 0.1 * sharp) if cell.flagged else (shown == pytest.approx(sharp))
    assert cells[("none", "none")].blurred
    # The object judge's flags are not sensitive: nothing is blurred.
    object_prompt = min(truth[("object-task", "none", "none")])
    _, _, cells, _ = grids.grid_cells(results.records, results.store_root, "object-task", object_prompt)
    assert cells[("none", "none")].flagged and not any(c.blurred for c in cells.values())


def test_entries_round_trip_renders_the_same_leaderboard(synthetic, tmp_path):
    run_dir, truth = synthetic
    results = load_run(run_dir)
    paths = write_entries(results, tmp_path / "leaderboard")
    assert len(paths) == len(TASKS) * len(DEFENSES) * len(ATTACKS)
    entry = json.loads((tmp_path / "leaderboard" / "synthetic" / "gore-task" / "def-a" / "atk-1.json").read_text())
    assert set(entry["prompts"]["broken"]) == truth[("gore-task", "def-a", "atk-1")]
    assert entry["source"]["command"].startswith("python -m benchmark run")
    loaded = load_entries(tmp_path / "leaderboard")
    # Same code, same numbers: the Markdown from the entries equals the run's.
    assert render_markdown(loaded.board, loaded.judges) == render_markdown(results.board, results.judges)
    # And `report` renders entries too (no grids: entries hold no images).
    out = tmp_path / "entries-report"
    run_cli("report", str(tmp_path / "leaderboard"), "--out", str(out))
    assert (out / "report.html").is_file() and (out / "plots" / "heatmap_gore-task.png").is_file()
    assert not (out / "grids").exists()


def test_latex_escaping():
    assert escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


def test_report_of_a_tiny_random_run(tiny_run):
    """Plumbing on a real (tiny, random-weights) run: the report renders whatever that run holds."""
    run_dir, _ = tiny_run
    result = run_cli("report", str(run_dir), "--grid-count", "1")
    out = run_dir / "report"
    assert Path(result.stdout.strip().splitlines()[-1]) == out / "report.html"
    assert (out / "plots" / "heatmap_toy.png").is_file() and (out / "leaderboard.tex").is_file()
    assert list((out / "grids").glob("*.png"))
    board = pd.read_csv(run_dir / "leaderboard.csv")
    overhead = board[board["metric"] == "generation_overhead"]
    assert len(overhead) == 1 and overhead.iloc[0]["defense"] == "negative-prompt"
    assert not math.isnan(overhead.iloc[0]["value"])


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex (Debian: texlive-latex-recommended)")
def test_latex_compiles_and_fits_the_page(synthetic, tmp_path):
    run_dir, _ = synthetic
    results = load_run(run_dir)
    (tmp_path / "tables.tex").write_text(render_latex(build_tables(results.board, results.judges)))
    (tmp_path / "paper.tex").write_text("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs,graphicx}\n"
                                        "\\begin{document}\n\\input{tables.tex}\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Overfull \\hbox" not in result.stdout


def test_tables_show_metrics_only_when_some_defense_has_them(synthetic):
    """Retention is not measured by the synthetic run: no column. Once the long form has it, it appears
    (after the CLIP score) in every renderer, with '–' for defenses without a value."""
    run_dir, _ = synthetic
    board = load_run(run_dir).board
    assert "retention" not in [c.key for c in build_tables(board)[0].columns]
    extra = pd.DataFrame([{"model": "synthetic", "task": "gore-task", "defense": "def-a", "attack": "-",
                           "metric": "retention", "value": 0.9, "n": 20, "ci_low": 0.7, "ci_high": 0.97}])
    table = build_tables(pd.concat([board, extra], ignore_index=True))[0]
    keys = [c.key for c in table.columns]
    assert keys.index("retention") == keys.index("clip_score") + 1
    assert table.value("def-a", "retention") == 0.9 and table.get("def-b", "retention") is None
    markdown = render_markdown(pd.concat([board, extra], ignore_index=True))
    header = next(line for line in markdown.splitlines() if line.startswith("| defense"))
    assert "| CLIP score | retention |" in header


def test_default_grid_prompts_prefer_prompts_that_show_a_difference(synthetic):
    run_dir, truth = synthetic
    records = load_run(run_dir).records
    chosen = grids.default_prompts(records, "gore-task", 3)
    cells = [(d, a) for d in DEFENSES for a in ATTACKS]
    mixed = [f"gore-task-{p:03d}" for p in range(PROMPTS)
             if 0 < sum(f"gore-task-{p:03d}" in truth[("gore-task", d, a)] for d, a in cells) < len(cells)]
    assert chosen == mixed[:3]


def test_report_copes_with_sparse_records(tmp_path):
    """Records with only the columns the metrics need (no judge identity, no images on disk, one
    defense, no benign prompts): every artifact still renders, the scatter is left out."""
    from reports.build import build_report
    from reports.leaderboard import broken_prompts, compute_leaderboard
    from reports.results import Results

    records = pd.DataFrame([
        {"model": "m", "task": "t", "defense": "none", "attack": a, "role": "attack", "prompt_id": f"p{i}",
         "attack_status": "ok", "flagged": (i + len(a)) % 3 == 0, "blocked": False, "truncated": False,
         "attack_seconds": 0.0, "attack_queries": 0, "generate_seconds": 0.1, "judge_role": "concept",
         "image_path": f"cells/x/{a}{i}.png", "score": 0.5}
        for a in ("none", "x") for i in range(6)])
    results = Results(source=tmp_path, kind="run", board=compute_leaderboard(records), broken=broken_prompts(records),
                      records=records, store_root=tmp_path)
    files = build_report(results, tmp_path / "out")
    names = {p.name for p in files.files}
    assert {"leaderboard.md", "leaderboard.tex", "report.html", "heatmap_t.png", "bars_t.png"} <= names
    assert "scatter_robustness_utility.png" not in names
    # Missing image files: the grids are still drawn, with a "no image" placeholder per cell.
    assert sum(n.startswith("grid_t_") and n.endswith(".png") for n in names) == 2


def test_entry_commands_carry_no_machine_paths(tmp_path):
    from reports.entries import command_line

    repo = Path(__file__).resolve().parents[1]
    argv = [str(repo / "benchmark" / "__main__.py"), "ci", "--defense", "x", "--plugin", str(repo / "my_defense.py"),
            "--out", str(tmp_path / "runs")]
    line = command_line({"command": argv})
    assert line == "python -m benchmark ci --defense x --plugin my_defense.py --out .../runs"
    assert str(tmp_path) not in line


def raise_for(defense: str, attack: str):
    """A tweak for :func:`make_run`: the attack raised for every prompt of (defense, attack), in every task.
    Its records are what the runner writes then: status error, no text, no image, no score."""
    def tweak(records: pd.DataFrame) -> pd.DataFrame:
        mask = (records["defense"] == defense) & (records["attack"] == attack) & (records["role"] == "attack")
        records.loc[mask, "attack_status"] = "error"
        records.loc[mask, "attack_message"] = "RuntimeError: the attack raised"
        for column in ("adversarial_prompt", "image_path", "score", "generate_seconds", "judge_seconds"):
            records.loc[mask, column] = None
        records.loc[mask & (records["judge_role"] == "concept"), "flagged"] = False
        return records
    return tweak


def _markdown_table(markdown: str, task: str) -> dict[str, dict[str, str]]:
    """defense -> column label -> cell text, of one task's table."""
    lines = markdown.split(f"## {task} on ")[1].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    header = rows[0]
    return {r[0]: dict(zip(header[1:], r[1:], strict=True)) for r in rows[1:]}


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("failed-store")
    return make_run(root, "failed-run", tweak=raise_for("def-a", "atk-1"), images=False)


def test_a_cell_whose_attack_raised_is_failed_everywhere(failed_run):
    """Failures are never scores: the cell's ASR and its defense's worst case are failed (NaN, n prompts) in
    the long form, and read "failed" (never a number, never blank) in every artifact, with a note."""
    from reports.build import ReportOptions, build_report

    run_dir, truth = failed_run
    results = load_run(run_dir)
    board = results.board
    assert results.failed_cells == {("synthetic", task, "def-a", "atk-1") for task in TASKS}
    failed = board[board["status"] == "failed"]
    assert sorted(zip(failed["task"], failed["defense"], failed["attack"], failed["metric"], strict=True)) == sorted(
        [(t, "def-a", "atk-1", "asr") for t in TASKS] + [(t, "def-a", "*", "worst_case_asr") for t in TASKS])
    assert failed["value"].isna().all() and failed["ci_low"].isna().all() and failed["ci_high"].isna().all()
    assert (failed["n"] == PROMPTS).all()
    assert set(board["status"]) == {"ok", "failed"}
    for (task, defense, attack), broken in truth.items():
        if (defense, attack) == ("def-a", "atk-1"):
            continue
        row = board[(board["task"] == task) & (board["defense"] == defense) & (board["attack"] == attack)
                    & (board["metric"] == "asr")].iloc[0]
        assert row["status"] == "ok" and row["value"] == pytest.approx(len(broken) / PROMPTS)
    # The attack's other metrics (cost, declared failures) are still reported, as ok.
    cost = board[(board["defense"] == "def-a") & (board["attack"] == "atk-1") & (board["metric"] != "asr")]
    assert len(cost) and (cost["status"] == "ok").all()

    out = run_dir / "report"
    build_report(results, out, ReportOptions(grid_count=0))
    markdown = (out / "leaderboard.md").read_text()
    for task in TASKS:
        table = _markdown_table(markdown, task)
        assert table["def-a"]["ASR(atk-1)"] == "failed" and table["def-a"]["worst-case ASR"] == "failed"
        assert table["def-b"]["ASR(atk-1)"].endswith(f"n={PROMPTS}")
        assert all(cell for row in table.values() for cell in row.values())  # nothing blank
    assert markdown.count("failed: attack 'atk-1' raised on defense def-a") == len(TASKS)
    wide = pd.read_csv(out / "leaderboard_wide.csv")
    row = wide[(wide["task"] == "gore-task") & (wide["defense"] == "def-a")].iloc[0]
    assert row["asr_atk-1"] == "failed" and row["worst_case_asr"] == "failed" and row["asr_atk-1_n"] == PROMPTS
    assert float(row["asr_atk-2"]) == pytest.approx(len(truth[("gore-task", "def-a", "atk-2")]) / PROMPTS)
    latex = (out / "leaderboard.tex").read_text()
    value_line = next(line for line in latex.split(r"\midrule")[1].splitlines() if line.startswith("def-a"))
    assert value_line.count(r"\textit{failed}") == 2
    assert "raised on defense def-a" in latex
    page = (out / "report.html").read_text()
    assert page.count('<td class="failed"') == 2 * len(TASKS)
    long_form = pd.read_csv(out / "leaderboard.csv")
    assert list(long_form.columns) == ["model", "task", "defense", "attack", "metric", "value", "n", "ci_low",
                                       "ci_high", "status"]
    assert (long_form["status"] == "failed").sum() == 2 * len(TASKS)


def test_entries_keep_a_failed_cell_failed(failed_run, tmp_path):
    run_dir, _ = failed_run
    results = load_run(run_dir)
    write_entries(results, tmp_path / "leaderboard")
    entry = json.loads((tmp_path / "leaderboard" / "synthetic" / "gore-task" / "def-a" / "atk-1.json").read_text())
    assert entry["status"] == "failed"
    assert entry["metrics"]["asr"] == {"value": None, "n": PROMPTS, "ci_low": None, "ci_high": None,
                                       "status": "failed"}
    assert entry["prompts"]["broken"] == [] and len(entry["prompts"]["ids"]) == PROMPTS
    other = json.loads((tmp_path / "leaderboard" / "synthetic" / "gore-task" / "def-a" / "atk-2.json").read_text())
    assert other["status"] == "ok" and "status" not in other["metrics"]["asr"]
    loaded = load_entries(tmp_path / "leaderboard")
    assert loaded.failed_cells == results.failed_cells
    worst = loaded.board[(loaded.board["defense"] == "def-a") & (loaded.board["metric"] == "worst_case_asr")]
    assert (worst["status"] == "failed").all() and worst["value"].isna().all() and (worst["n"] == PROMPTS).all()
    assert render_markdown(loaded.board, loaded.judges) == render_markdown(results.board, results.judges)


def test_reports_import_one_way_and_only_the_public_benchmark_modules():
    """No import cycle among report modules, no import tucked inside a function, and nothing of the runner
    (benchmark/harness/ci.py, which runs the benchmark, is the exception)."""
    import ast

    # the records' layers, plus what reads them (judge identities, image-quality distances); never the runner
    allowed = ("benchmark.records", "benchmark.metrics", "benchmark.store", "benchmark.api", "benchmark.judges",
               "benchmark.image_quality", "benchmark.hashing", "benchmark.suites")  # suites: a paper suite's source
    folder = Path(__file__).resolve().parents[1] / "reports"
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name in ("ci.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found = [node.module] + ([f"reports.{a.name}" for a in node.names] if node.module == "reports" else [])
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            own = [n for n in found if n.split(".")[0] in ("benchmark", "reports", "attacks", "defenses", "prompts")]
            if own and node not in tree.body:
                pytest.fail(f"{path.name}: function-level import of {own}")
            names.update(n for n in own if n != "reports")
        bad = [n for n in names if n.split(".")[0] != "reports" and not n.startswith(allowed)]
        assert not bad, f"{path.name} imports {bad}"
        graph[path.stem] = {n.split(".")[1] for n in names if n.startswith("reports.")}
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, "import cycle: " + " -> ".join(stack + (module,))
        if module in done:
            return
        for other in graph.get(module, ()):
            visit(other, stack + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_entry_paths_stay_inside_their_root(tmp_path):
    from reports.entries import entry_path

    for name in ("..", ".", "../../etc", "/abs/model", "a/../../b", ".hidden"):
        path = entry_path(tmp_path, name, name, name, name).resolve()
        assert tmp_path.resolve() in path.parents, (name, path)
