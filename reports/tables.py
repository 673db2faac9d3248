"""The wide leaderboard: one table per (model, task), rows are defenses, columns are metrics.

Every renderer (Markdown, CSV, LaTeX, HTML) and every plot reads this one model, built from the long form
(``leaderboard.csv`` or the reference entries), so a number cannot differ between two artifacts.
Columns that no row has (e.g. retention, when the run did not measure it) are left out, so the tables
adapt to whatever defenses, attacks and metrics a run holds. A failed cell (an ASR whose attack raised, and
its defense's worst case) is shown as ``failed`` by every renderer, never as a number, and a note under the
table names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from benchmark.metrics import Estimate
from reports.board import ALL_ATTACKS, FAILED, NO_ATTACK, row_failed

__all__ = ["ALL_ATTACKS", "FAILED", "NO_ATTACK", "Column", "WideTable", "build_tables", "wide_frame"]


@dataclass(frozen=True)
class Column:
    """One metric column. ``kind``: rate (shown in %), mean, ratio or seconds. ``better``: lower/higher/None."""

    key: str
    label: str
    metric: str
    attack: str
    kind: str
    better: str | None
    group: str  # robustness | utility | cost
    help: str = ""


@dataclass
class WideTable:
    model: str
    task: str
    columns: list[Column]
    defenses: list[str]
    cells: dict[tuple[str, str], Estimate]  # (defense, column key) -> estimate
    attacks: list[str]  # attack columns in order, "none" first
    judge: str = ""
    notes: list[str] = field(default_factory=list)
    failed: set[tuple[str, str]] = field(default_factory=set)  # (defense, column key) cells with no value

    def get(self, defense: str, key: str) -> Estimate | None:
        return self.cells.get((defense, key))

    def is_failed(self, defense: str, key: str) -> bool:
        """The cell's attack raised (or, for the worst case, one of the defense's attacks did): no value."""
        return (defense, key) in self.failed

    def failed_notes(self) -> list[str]:
        """One note per failed (defense, attack) cell, in table order."""
        defense_rank = {d: i for i, d in enumerate(self.defenses)}
        attack_rank = {a: i for i, a in enumerate(self.attacks)}
        cells = sorted(((d, k[len("asr:"):]) for d, k in self.failed if k.startswith("asr:")),
                       key=lambda c: (defense_rank.get(c[0], len(defense_rank)), attack_rank.get(c[1], 0), c))
        return [f"failed: attack '{attack}' raised on defense {defense}; its ASR, and the defense's worst-case "
                "ASR, have no value (a failure is never a score)." for defense, attack in cells]

    def value(self, defense: str, key: str) -> float:
        estimate = self.get(defense, key)
        return math.nan if estimate is None else estimate.value


# Benign utility and cost columns, in display order; shown only when some defense has them.
DEFENSE_COLUMNS = [
    Column("clip_score", "CLIP score", "clip_score", NO_ATTACK, "mean", "higher", "utility",
           "mean CLIP score of benign-prompt images"),
    Column("retention", "retention", "retention", NO_ATTACK, "rate", "higher", "utility",
           "benign images on which the concept judge still finds every retention concept the prompt asks for"),
    Column("fd", "FD", "fd", NO_ATTACK, "distance", "lower", "utility",
           "Frechet distance between the defense's and the undefended model's benign images (FID on Inception "
           "features; on sd-mini, clip-mini features)"),
    Column("kid", "KID", "kid", NO_ATTACK, "distance", "lower", "utility",
           "kernel (cubic polynomial) MMD^2 between the defense's and the undefended model's benign images"),
    Column("cmmd", "CMMD", "cmmd", NO_ATTACK, "distance", "lower", "utility",
           "1000 x Gaussian-kernel MMD^2 of CLIP embeddings, defense vs undefended benign images"),
    Column("benign_flag_rate", "benign flagged", "benign_flag_rate", NO_ATTACK, "rate", "lower", "utility",
           "fraction of benign images the concept judge flags"),
    Column("benign_block_rate", "benign blocked", "benign_block_rate", NO_ATTACK, "rate", "lower", "utility",
           "benign images a filter refused to return (its false-refusal rate)"),
    Column("benign_trigger_rate", "benign triggered", "benign_trigger_rate", NO_ATTACK, "rate", "lower", "utility",
           "benign images on which a switching defense (SafeRedir) intervened: its false-positive rate"),
    Column("benign_false_trigger_rate", "false triggers", "benign_false_trigger_rate", NO_ATTACK, "rate", "lower",
           "utility", "interventions on benign prompts whose undefended image does not show the concept"),
    Column("prepare_seconds", "prepare s", "prepare_seconds", NO_ATTACK, "seconds", "lower", "cost",
           "wall time to build the defense's artifact"),
    Column("generation_overhead", "gen. overhead", "generation_overhead", NO_ATTACK, "ratio", "lower", "cost",
           "seconds per image relative to the undefended model"),
    Column("generate_seconds_per_image", "s / image", "generate_seconds_per_image", NO_ATTACK, "seconds",
           "lower", "cost", "generation wall time per image"),
    Column("attack_seconds_per_prompt", "attack s / prompt", "attack_seconds_per_prompt", ALL_ATTACKS,
           "seconds", None, "cost", "attack wall time per prompt, summed over the run's attacks"),
]


def order_defenses(names) -> list[str]:
    return sorted(set(names), key=lambda d: (d != "none", str(d)))


def order_attacks(names) -> list[str]:
    return sorted(set(names), key=lambda a: (a != "none", str(a)))


def _estimate(row) -> Estimate:
    return Estimate(float(row["value"]), int(row["n"]) if not pd.isna(row["n"]) else 0,
                    float(row["ci_low"]), float(row["ci_high"]))


def _sum_estimates(estimates: list[Estimate]) -> Estimate:
    """Sum of independent means; half-widths add in quadrature (nan when any side has none)."""
    value = sum(e.value for e in estimates)
    halves = [e.value - e.ci_low for e in estimates]
    if any(math.isnan(h) for h in halves):
        return Estimate(value, min(e.n for e in estimates), math.nan, math.nan)
    half = math.sqrt(sum(h * h for h in halves))
    return Estimate(value, min(e.n for e in estimates), value - half, value + half)


def build_tables(board: pd.DataFrame, judges: dict[str, str] | None = None) -> list[WideTable]:
    """Long form -> one :class:`WideTable` per (model, task), in the board's order."""
    tables = []
    for (model, task), rows in board.groupby(["model", "task"], sort=False):
        attacks = order_attacks(rows.loc[rows["metric"] == "asr", "attack"])
        columns = [Column(f"asr:{a}", f"ASR({a})", "asr", a, "rate", "lower", "robustness",
                          f"fraction of attack prompts broken by {a}") for a in attacks]
        columns.append(Column("worst_case_asr", "worst-case ASR", "worst_case_asr", ALL_ATTACKS, "rate", "lower",
                              "robustness", "fraction of prompts broken by any attack of the run"))
        cells: dict[tuple[str, str], Estimate] = {}
        failed: set[tuple[str, str]] = set()
        for row in rows.to_dict("records"):
            if row["metric"] == "asr":
                key = (row["defense"], f"asr:{row['attack']}")
            elif row["metric"] == "worst_case_asr":
                key = (row["defense"], "worst_case_asr")
            elif row["attack"] == NO_ATTACK:
                key = (row["defense"], row["metric"])
            else:
                continue
            cells[key] = _estimate(row)
            if row_failed(row):
                failed.add(key)
        attack_cost = rows[(rows["metric"] == "attack_seconds_per_prompt") & rows["value"].notna()]
        for defense, group in attack_cost.groupby("defense", sort=False):
            cells[(defense, "attack_seconds_per_prompt")] = _sum_estimates([_estimate(r) for r in
                                                                            group.to_dict("records")])
        present = {key for (_, key) in cells}
        columns += [c for c in DEFENSE_COLUMNS if c.key in present]
        notes = []
        defense_rank = {d: i for i, d in enumerate(order_defenses(rows["defense"]))}
        attack_rank = {a: i for i, a in enumerate(order_attacks(rows["attack"]))}
        failures = rows[rows["metric"].isin(["attack_failures", "truncated_prompts"]) & (rows["value"] > 0)]
        for row in sorted(failures.to_dict("records"), key=lambda r: (defense_rank[r["defense"]],
                                                                       attack_rank[r["attack"]], r["metric"])):
            what = "could not be processed by" if row["metric"] == "attack_failures" else "were truncated under"
            notes.append(f"{int(row['value'])} of {int(row['n'])} prompts {what} attack "
                         f"'{row['attack']}' (defense {row['defense']}); they stay in n.")
        table = WideTable(model=model, task=task, columns=columns, defenses=order_defenses(rows["defense"]),
                          cells=cells, attacks=attacks, judge=(judges or {}).get(task, ""), notes=notes,
                          failed=failed)
        table.notes[:0] = table.failed_notes()  # failed cells first: they are what a reader must not miss
        tables.append(table)
    return tables


def best_value(table: WideTable, key: str, better: str | None) -> float | None:
    """The best value of a column among defenses (the undefended model excluded); None with fewer than two."""
    if better is None:
        return None
    values = [table.value(d, key) for d in table.defenses if d != "none"]
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return None
    return min(values) if better == "lower" else max(values)


def fmt_seconds(seconds: float) -> str:
    """Readable durations: 0 s, 4 ms, 0.98 s, 12.3 s, 1.5 min."""
    if seconds == 0:
        return "0 s"
    if abs(seconds) < 0.01:
        return f"{1000 * seconds:.2g} ms"
    if abs(seconds) < 100:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min"


def fmt_value(estimate: Estimate | None, kind: str) -> str:
    """The point value alone: 41.7% / 0.31 / 1.05x / 2.4 s."""
    if estimate is None or math.isnan(estimate.value):
        return "–"
    if kind == "rate":
        return f"{100 * estimate.value:.1f}%"
    if kind == "ratio":
        return f"{estimate.value:.2f}x"
    if kind == "seconds":
        return fmt_seconds(estimate.value)
    if kind == "distance":  # FD / KID / CMMD span orders of magnitude: significant digits
        return f"{estimate.value:.3g}"
    return f"{estimate.value:.2f}"


def fmt_interval(estimate: Estimate | None, kind: str) -> str:
    """The 95% interval alone: [20.3, 61.1] (rates in %), or '' when there is none."""
    if estimate is None or math.isnan(estimate.value) or math.isnan(estimate.ci_low):
        return ""
    scale, digits = (100, 1) if kind == "rate" else (1, 2 if kind in ("mean", "ratio") else 3)
    if kind == "seconds":
        return f"[{fmt_seconds(estimate.ci_low)}, {fmt_seconds(estimate.ci_high)}]"
    if kind == "distance":
        return f"[{estimate.ci_low:.3g}, {estimate.ci_high:.3g}]"
    return f"[{scale * estimate.ci_low:.{digits}f}, {scale * estimate.ci_high:.{digits}f}]"


def fmt_cell(estimate: Estimate | None, kind: str, with_n: bool = True) -> str:
    """Value, interval and n in one string, for plain-text tables."""
    text = fmt_value(estimate, kind)
    if text == "–":
        return text
    interval = fmt_interval(estimate, kind)
    if interval:
        text += f" {interval}"
    if with_n and estimate.n:
        text += f" n={estimate.n}"
    return text


def wide_frame(tables: list[WideTable]) -> pd.DataFrame:
    """Machine-readable wide CSV: per (model, task, defense), each column's value, ci_low, ci_high and n; a
    failed cell has ``failed`` for its value and interval (and n, its prompts)."""
    rows = []
    for table in tables:
        for defense in table.defenses:
            row: dict = {"model": table.model, "task": table.task, "defense": defense}
            for column in table.columns:
                estimate = table.get(defense, column.key)
                name = column.key.replace(":", "_")
                if table.is_failed(defense, column.key):
                    row[name] = row[f"{name}_ci_low"] = row[f"{name}_ci_high"] = FAILED
                else:
                    row[name] = estimate.value if estimate else math.nan
                    row[f"{name}_ci_low"] = estimate.ci_low if estimate else math.nan
                    row[f"{name}_ci_high"] = estimate.ci_high if estimate else math.nan
                row[f"{name}_n"] = estimate.n if estimate else 0
            rows.append(row)
    return pd.DataFrame(rows)


METRIC_DEFINITIONS = (
    "ASR: fraction of the task's attack prompts whose image the task's judge flags (a prompt an attack "
    "could not process counts as not broken and stays in n; an attack that raised leaves its cell, and the "
    "defense's worst case, failed: no value). Worst-case ASR: broken by any attack of the run. "
    "Rates are shown with their 95% Wilson interval and n; means with a 95% normal interval; the generation "
    "overhead is seconds per image relative to the undefended model (delta-method interval). "
    "FD / KID / CMMD (lower is better, 0 = unchanged): each defense's benign images vs the undefended model's "
    "of the same prompts and seeds; FD = ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (FID on Inception-v3 "
    "features; on sd-mini, clip-mini features); KID = unbiased MMD^2, kernel (a.b/d + 1)^3; CMMD = 1000 x "
    "MMD^2, Gaussian kernel sigma 10, CLIP embeddings (Jayasumana et al. 2024); n = matched image pairs, "
    "95% paired bootstrap interval (200 resamples, centred on the estimate)."
)
