"""Render every report artifact of a run (or of a folder of reference entries) into one folder.

``<out>/``: ``leaderboard.md``, ``leaderboard.csv`` (long form), ``leaderboard_wide.csv``,
``leaderboard.tex`` (booktabs), ``report.html`` (self-contained), ``plots/*.png|pdf`` (heatmap and bars per
task, the robustness-utility scatter), ``grids/*.png|pdf`` (image grids; runs only: entries hold no images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from benchmark.store import atomic_write_text
from reports import grids, plots
from reports.board import ResultsFormatError
from reports.html import Figure, Section, render_page
from reports.latex import render_latex
from reports.leaderboard import render_markdown
from reports.results import Results
from reports.tables import build_tables, wide_frame

log = logging.getLogger(__name__)


@dataclass
class ReportOptions:
    plots: bool = True
    grid_prompts: list[str] = field(default_factory=list)  # prompt ids for image grids (default: the first)
    grid_count: int = 2  # how many prompts per task when grid_prompts is empty; 0 for no grids
    unblurred: bool = False  # show images the nudity judge flags without blurring them
    title: str = ""


@dataclass
class ReportFiles:
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    def add(self, *paths: Path) -> None:
        self.files.extend(paths)


def build_report(results: Results, out_dir: Path, options: ReportOptions | None = None) -> ReportFiles:
    options = options or ReportOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir)
    for folder in ("plots", "grids"):  # a re-render must not leave figures of an earlier render behind
        for stale in [*(out_dir / folder).glob("*.png"), *(out_dir / folder).glob("*.pdf")]:
            stale.unlink()
    tables = build_tables(results.board, results.judges)
    if not tables:
        raise ResultsFormatError(f"{results.source} holds no leaderboard rows (no attack prompt was judged)")
    several_models = len({t.model for t in tables}) > 1

    def name(table, kind: str) -> str:
        return plots.slug(f"{kind}_{table.model}_{table.task}" if several_models else f"{kind}_{table.task}")

    markdown = render_markdown(results.board, results.judges)
    for path, text in [(out_dir / "leaderboard.md", markdown),
                       (out_dir / "leaderboard.csv", results.board.to_csv(index=False)),
                       (out_dir / "leaderboard_wide.csv", wide_frame(tables).to_csv(index=False)),
                       (out_dir / "leaderboard.tex", render_latex(tables))]:
        atomic_write_text(path, text)
        files.add(path)

    sections = [Section(t) for t in tables]
    overview: list[Figure] = []
    grid_figures: list[Figure] = []
    if options.plots:
        plot_dir = out_dir / "plots"
        with plots.paper_style():
            for section in tqdm(sections, desc="plots", disable=len(sections) < 3):
                table = section.table
                png, pdf = plots.save(plots.heatmap(table), plot_dir, name(table, "heatmap"))
                section.figures.append(Figure(png, f"ASR heatmap, {table.task}: defense x attack", pdf))
                png, pdf = plots.save(plots.bars(table), plot_dir, name(table, "bars"))
                section.figures.append(Figure(png, f"ASR per attack with 95% intervals, {table.task}", pdf))
                files.add(*[f for fig in section.figures for f in (fig.path, fig.pdf)])
            figure = plots.scatter(tables)
            if figure is not None:
                png, pdf = plots.save(figure, plot_dir, "scatter_robustness_utility")
                overview.append(Figure(png, "Worst-case ASR vs. benign CLIP score; dashed: Pareto front", pdf))
                files.add(png, pdf)
            else:
                log.info("no benign CLIP score in %s: robustness-utility scatter skipped", results.source)
            figure = plots.scatter(tables, utility="fd")
            if figure is not None:  # the image-quality axis papers report (FID on SD; clip-mini FD on sd-mini)
                png, pdf = plots.save(figure, plot_dir, "scatter_robustness_fd")
                overview.append(Figure(png, "Worst-case ASR vs. FD of benign images to the undefended model's "
                                       "(lower is better); dashed: Pareto front", pdf))
                files.add(png, pdf)
            if results.records is not None and results.store_root is not None and (
                    options.grid_prompts or options.grid_count > 0):
                grid_figures = _grids(results, tables, out_dir / "grids", options, several_models)
                files.add(*[f for fig in grid_figures for f in (fig.path, fig.pdf)])

    title = options.title or ("unlearn-arena report: " + (results.source.name or str(results.source)))
    page = render_page(title, sections, overview, grid_figures, results.provenance, results.config_text,
                       results.judges, str(results.source))
    atomic_write_text(out_dir / "report.html", page)
    files.add(out_dir / "report.html")
    return files


def _grids(results: Results, tables, grid_dir: Path, options: ReportOptions, several_models: bool) -> list[Figure]:
    figures = []
    records = results.records
    for table in tables:
        task_records = records[records["model"] == table.model]
        prompt_ids = options.grid_prompts or grids.default_prompts(task_records, table.task, options.grid_count)
        for prompt_id in tqdm(prompt_ids, desc=f"grids {table.task}", disable=len(prompt_ids) < 4):
            figure = grids.image_grid(task_records, results.store_root, table.task, prompt_id, options.unblurred)
            if figure is None:
                log.warning("task %s has no attack prompt %r: no grid", table.task, prompt_id)
                continue
            stem = f"grid_{table.model}_{table.task}_{prompt_id}" if several_models else \
                f"grid_{table.task}_{prompt_id}"
            png, pdf = plots.save(figure, grid_dir, plots.slug(stem))
            blurred = "" if options.unblurred or not grids.task_is_sensitive(task_records, table.task) else \
                " (images the nudity judge flags are blurred)"
            figures.append(Figure(png, f"{table.task}, prompt {prompt_id}: defense x attack{blurred}", pdf))
    return figures
