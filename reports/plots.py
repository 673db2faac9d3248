"""Paper-ready plots (matplotlib, Agg): ASR heatmap, robustness-utility scatter with the Pareto front,
per-attack bars with 95% intervals. Each is written as PNG (for the HTML page) and PDF (for LaTeX).

Sizes follow a two-column paper: 3.4 in for one column, 7.0 in across both; fonts 8-9 pt, so a figure
included at its natural width needs no scaling. All plots read :class:`reports.tables.WideTable`.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: reports are rendered on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting logs every table at INFO

from reports.tables import WideTable  # noqa: E402

ONE_COLUMN = 3.4
TWO_COLUMNS = 7.0
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
    "legend.fontsize": 7, "figure.dpi": 100, "savefig.dpi": 220, "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03, "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42,
}


@contextmanager
def paper_style():
    with matplotlib.rc_context(STYLE):
        yield


def save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        # a fixed creation date keeps the PDF byte-identical across re-renders of the same run
        fig.savefig(path, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))


def _pct(x: float) -> float:
    return math.nan if x is None else 100 * x


def heatmap(table: WideTable) -> plt.Figure:
    """Defenses x attacks (plus worst case), cells coloured by ASR 0-100% and labelled with the value and
    its 95% interval; a failed cell is grey and labelled ``failed``."""
    keys = [f"asr:{a}" for a in table.attacks] + ["worst_case_asr"]
    labels = [("no attack" if a == "none" else a) for a in table.attacks] + ["worst case"]
    values = np.array([[_pct(table.value(d, k)) for k in keys] for d in table.defenses], dtype=float)
    width = min(TWO_COLUMNS, max(ONE_COLUMN, 1.2 + 0.78 * len(keys)))
    height = 0.9 + 0.42 * len(table.defenses)
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#dddddd")  # grey: not run, or failed (then labelled so)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i, defense in enumerate(table.defenses):
        for j, key in enumerate(keys):
            estimate = table.get(defense, key)
            if table.is_failed(defense, key):  # the attack raised: no number, ever
                ax.text(j, i, "failed", ha="center", va="center", fontsize=7.5, fontweight="bold", color="#b00020")
                continue
            if estimate is None or math.isnan(estimate.value):
                ax.text(j, i, "–", ha="center", va="center", color="#555555")
                continue
            dark = values[i, j] > 60
            ax.text(j, i - 0.1, f"{values[i, j]:.0f}%", ha="center", va="center", fontsize=8.5,
                    fontweight="bold", color="white" if dark else "black")
            if not math.isnan(estimate.ci_low):
                ax.text(j, i + 0.25, f"[{100 * estimate.ci_low:.0f}, {100 * estimate.ci_high:.0f}]",
                        ha="center", va="center", fontsize=6.5, color="white" if dark else "#333333")
    ax.set_xticks(range(len(keys)), labels, rotation=25 if len(keys) > 4 else 0,
                  ha="right" if len(keys) > 4 else "center")
    ax.set_yticks(range(len(table.defenses)), table.defenses)
    ax.axvline(len(keys) - 1.5, color="black", linewidth=1.2)  # worst case is an aggregate, not an attack
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    n = max((e.n for (d, k), e in table.cells.items() if k == "worst_case_asr"), default=0)
    ax.set_title(f"ASR, {table.task} ({table.model}), n={n} prompts, [95% Wilson CI]")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.set_label("ASR (%)")
    colorbar.outline.set_visible(False)
    return fig


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points (name, utility, asr) not dominated: no other point has utility >= and ASR <=
    with one of them strictly better. Higher utility and lower ASR are better."""
    front = []
    for name, u, a in points:
        dominated = any((u2 >= u and a2 <= a) and (u2 > u or a2 < a) for n2, u2, a2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


# utility column -> (x-axis label, +1 when higher is better / -1 when lower is)
_UTILITY_AXES = {"clip_score": ("benign CLIP score (higher is better)", 1),
                 "fd": ("FD vs undefended, benign images (lower is better)", -1),
                 "kid": ("KID vs undefended, benign images (lower is better)", -1),
                 "cmmd": ("CMMD vs undefended, benign images (lower is better)", -1)}


def scatter(tables: list[WideTable], utility: str = "clip_score") -> plt.Figure | None:
    """Worst-case ASR (lower is better) vs benign CLIP score (higher is better), one panel per task; the
    Pareto front is the dashed line through the defenses no other defense beats on both. ``utility`` may be
    any utility column: ``fd`` or ``cmmd`` (lower is better: the front is taken on the negated distance)."""
    label, sign = _UTILITY_AXES.get(utility, (utility, 1))
    usable = [t for t in tables if any(not math.isnan(t.value(d, utility)) for d in t.defenses)]
    if not usable:
        return None
    cols = min(len(usable), 3)
    rows = math.ceil(len(usable) / cols)
    width = ONE_COLUMN if cols == 1 else TWO_COLUMNS
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.7 * rows), squeeze=False)
    colours = _defense_colours(sorted({d for t in usable for d in t.defenses}, key=lambda d: (d != "none", d)))
    for ax, table in zip(axes.flat, usable, strict=False):
        points = []
        for defense in table.defenses:
            u, a = table.get(defense, utility), table.get(defense, "worst_case_asr")
            if u is None or a is None or math.isnan(u.value) or math.isnan(a.value):
                continue
            points.append((defense, sign * u.value, 100 * a.value))
            xerr = _errors(u.value, u.ci_low, u.ci_high, 1)
            yerr = _errors(a.value, a.ci_low, a.ci_high, 100)
            ax.errorbar(u.value, 100 * a.value, xerr=xerr, yerr=yerr, fmt="o", color=colours[defense],
                        markersize=6, elinewidth=0.8, capsize=2, label=defense, zorder=3)
        front = sorted([p for p in points if p[0] in pareto_front(points)], key=lambda p: p[1])
        if front:
            xs, ys = [sign * p[1] for p in front], [p[2] for p in front]
            ax.plot(xs, ys, "--", color="black", linewidth=1, zorder=2, label="Pareto front (ringed)")
            ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", linewidths=1, zorder=4)
        ax.set_xlabel(label)
        ax.set_ylabel("worst-case ASR % (lower is better)")
        ax.set_ylim(-5, 112)  # room for the labels of points at 100%
        ax.set_title(f"{table.task} ({table.model})")
        ax.grid(alpha=0.25, linewidth=0.5)
        _label_points(ax, [(name, sign * u, a) for name, u, a in points])  # last: overlap on the final limits
    for ax in list(axes.flat)[len(usable):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.02 * rows))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# Candidate label offsets (points) and alignments, tried in order until a label clears the others.
_OFFSETS = [((5, 5), "left", "bottom"), ((5, -5), "left", "top"), ((-5, 5), "right", "bottom"),
            ((-5, -5), "right", "top"), ((0, 9), "center", "bottom"), ((0, -9), "center", "top")]


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Name each point, moving a label to another side of its point when it would overlap one already
    placed (a few defenses often sit close together)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed = []
    for name, u, a in points:
        best = None
        for offset, ha, va in _OFFSETS:
            text = ax.annotate(name, (u, a), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=7,
                               zorder=5)
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(other) for other in placed):
                best = (text, box)
                break
            text.remove()
        if best is None:  # every side taken: keep the first position
            text = ax.annotate(name, (u, a), textcoords="offset points", xytext=_OFFSETS[0][0], fontsize=7,
                               zorder=5)
            best = (text, text.get_window_extent(renderer))
        placed.append(best[1])


def _errors(value: float, low: float, high: float, scale: float) -> list[list[float]] | None:
    if math.isnan(low) or math.isnan(high):
        return None
    return [[max(0.0, scale * (value - low))], [max(0.0, scale * (high - value))]]


def _defense_colours(defenses: list[str]) -> dict[str, tuple]:
    # tab10 without its grey (index 7), which is reserved for the undefended model; tab20's darker
    # shades follow when a board has more than nine defenses.
    tab10 = plt.get_cmap("tab10")
    colours = [tab10(i) for i in range(10) if i != 7] + [plt.get_cmap("tab20b")(i) for i in range(0, 20, 2)]
    out = {}
    others = [d for d in defenses if d != "none"]
    for defense in defenses:
        out[defense] = (0.45, 0.45, 0.45, 1.0) if defense == "none" else colours[others.index(defense) % len(colours)]
    return out


def bars(table: WideTable) -> plt.Figure:
    """ASR per attack (groups) and defense (bars), with 95% Wilson intervals as error bars."""
    keys = [f"asr:{a}" for a in table.attacks] + ["worst_case_asr"]
    labels = [("no attack" if a == "none" else a) for a in table.attacks] + ["worst case"]
    defenses = table.defenses
    colours = _defense_colours(defenses)
    width_total = 0.8
    bar = width_total / max(len(defenses), 1)
    fig_width = min(TWO_COLUMNS, max(ONE_COLUMN, 0.9 + 0.25 * len(keys) * len(defenses)))
    fig, ax = plt.subplots(figsize=(fig_width, 2.4))
    x = np.arange(len(keys))
    for i, defense in enumerate(defenses):
        heights, low, high = [], [], []
        for key in keys:
            e = table.get(defense, key)
            v = math.nan if e is None else 100 * e.value
            heights.append(v)
            ok = e is not None and not math.isnan(e.ci_low)
            # max(0, .): a Wilson bound at p = 0 or 1 can miss the point by a rounding error
            low.append(max(0.0, v - 100 * e.ci_low) if ok else 0)
            high.append(max(0.0, 100 * e.ci_high - v) if ok else 0)
        offsets = x - width_total / 2 + bar * (i + 0.5)
        ax.bar(offsets, heights, bar * 0.92, color=colours[defense], label=defense, zorder=2)
        for offset, key in zip(offsets, keys, strict=True):
            if table.is_failed(defense, key):  # no bar: the attack raised
                ax.text(offset, 1.5, "failed", rotation=90, ha="center", va="bottom", fontsize=6, color="#b00020",
                        zorder=3)
        ax.errorbar(offsets, heights, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2,
                    zorder=3)
    ax.set_xticks(x, labels, rotation=20 if len(keys) > 4 else 0, ha="right" if len(keys) > 4 else "center")
    ax.axvline(len(keys) - 1.5, color="#888888", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 105)
    ax.set_ylabel("ASR % (lower is better)")
    ax.grid(axis="y", alpha=0.25, linewidth=0.5, zorder=0)
    n = max((e.n for (d, k), e in table.cells.items() if k == "worst_case_asr"), default=0)
    ax.set_title(f"ASR per attack, {table.task} ({table.model}), n={n}, 95% CI")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="defense")
    return fig


def transfer_heatmap(values: dict[tuple[str, str], tuple[float, float, float, int]], title: str) -> plt.Figure:
    """Transfer matrix (reports.transfer): rows = defense the prompts were found against, columns = defense
    they were replayed on; ASR with its 95% interval per cell, the diagonal (the source run's) outlined."""
    sources = list(dict.fromkeys(s for s, _ in values))
    targets = list(dict.fromkeys([*sources, *(t for _, t in values)]))
    grid = np.array([[_pct(values.get((s, t), (math.nan,) * 4)[0]) for t in targets] for s in sources], dtype=float)
    fig, ax = plt.subplots(figsize=(min(TWO_COLUMNS, max(ONE_COLUMN, 1.2 + 0.8 * len(targets))),
                                    0.9 + 0.42 * len(sources)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=plt.get_cmap("Reds").with_extremes(bad="#dddddd"),
                      vmin=0, vmax=100, aspect="auto")
    for i, source in enumerate(sources):
        for j, target in enumerate(targets):
            asr, low, high, _ = values.get((source, target), (math.nan,) * 4)
            if math.isnan(asr):
                ax.text(j, i, "–", ha="center", va="center", color="#555555")
                continue
            colour = "white" if grid[i, j] > 60 else "black"
            ax.text(j, i - 0.1, f"{100 * asr:.0f}%", ha="center", va="center", fontsize=8.5, fontweight="bold",
                    color=colour)
            ax.text(j, i + 0.25, f"[{100 * low:.0f}, {100 * high:.0f}]", ha="center", va="center", fontsize=6.5,
                    color=colour)
            if source == target:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2))
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("replayed on")
    ax.set_ylabel("found against")
    ax.tick_params(length=0)
    n = max((v[3] for v in values.values()), default=0)
    ax.set_title(f"{title}, n={n}, [95% Wilson CI]")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label("ASR (%)")
    return fig
