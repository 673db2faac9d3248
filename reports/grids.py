"""Image grids: for one prompt of a task, rows are defenses and columns attacks, each cell the image that
cell generated. Images the task's nudity judge flags are blurred unless the user asks for them unblurred
(``blur=False``): the report may be shown on a screen or in a paper where explicit images are not wanted.

"Nudity judge" means NudeNet, and sd-mini's detector on its ``gore`` label (the miniature world's stand-in
for nudity); other judges (objects, styles) flag nothing that needs hiding.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from benchmark.records import ATTACK_ERROR  # noqa: E402
from reports.plots import TWO_COLUMNS  # noqa: E402
from reports.tables import order_attacks, order_defenses  # noqa: E402

log = logging.getLogger(__name__)

SENSITIVE_JUDGES = {"nudenet": None, "mini-detector": {"gore"}}  # judge -> presets (None: any)


def task_is_sensitive(records: pd.DataFrame, task: str) -> bool:
    """Whether the task's concept judge is a nudity judge (its flagged images are blurred)."""
    rows = records[(records["task"] == task) & (records["judge_role"] == "concept")]
    if rows.empty or "judge" not in rows:
        return False
    row = rows.iloc[0]
    return is_sensitive(row["judge"], row.get("judge_preset"))


def is_sensitive(judge: str, preset: str | None) -> bool:
    if judge not in SENSITIVE_JUDGES:
        return False
    presets = SENSITIVE_JUDGES[judge]
    return presets is None or str(preset) in presets


def blur(image: Image.Image) -> Image.Image:
    """Strong enough that nothing is recognisable, at any image size."""
    radius = max(4, min(image.size) // 6)
    return image.filter(ImageFilter.GaussianBlur(radius))


@dataclass
class GridCell:
    image: Image.Image | None
    flagged: bool
    blurred: bool
    text: str  # the adversarial prompt that made it
    failed: bool = False  # the attack raised for this cell: no image


def _present(value) -> bool:
    """Not None / NaN / pd.NA (records read back from parquet hold all three for a missing value)."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def default_prompts(records: pd.DataFrame, task: str, count: int) -> list[str]:
    """``count`` attack prompt ids of the task: first those whose grid shows a difference (some cells
    flagged, some not), then the others, each in the order of the prompt set."""
    rows = records[(records["task"] == task) & (records["role"] == "attack") & (records["judge_role"] == "concept")]
    rows = rows.assign(prompt_id=rows["prompt_id"].astype(str), flagged=rows["flagged"].fillna(False).astype(bool))
    order = list(dict.fromkeys(rows["prompt_id"]))
    mixed = rows.groupby("prompt_id")["flagged"].nunique() > 1
    return sorted(order, key=lambda p: (not mixed.get(p, False), order.index(p)))[:count]


def grid_cells(records: pd.DataFrame, store_root: Path, task: str, prompt_id: str,
               unblurred: bool = False) -> tuple[list[str], list[str], dict[tuple[str, str], GridCell], str]:
    rows = records[(records["task"] == task) & (records["role"] == "attack")
                   & (records["prompt_id"].astype(str) == str(prompt_id)) & (records["judge_role"] == "concept")]
    if "image_index" in rows:
        rows = rows[rows["image_index"].fillna(0) == 0]
    defenses, attacks = order_defenses(rows["defense"]), order_attacks(rows["attack"])
    cells: dict[tuple[str, str], GridCell] = {}
    for row in rows.to_dict("records"):
        flagged = bool(row.get("flagged")) if _present(row.get("flagged")) else False
        image = None
        path = row.get("image_path")
        if isinstance(path, str) and path:
            file = (store_root / path).resolve()
            if store_root.resolve() in file.parents and file.is_file():
                image = Image.open(file).convert("RGB")
            else:
                log.warning("image %s not found under %s", path, store_root)
        hide = flagged and not unblurred and is_sensitive(row.get("judge", ""), row.get("judge_preset"))
        if image is not None and hide:
            image = blur(image)
        text = row.get("adversarial_prompt")
        cells[(row["defense"], row["attack"])] = GridCell(image, flagged, hide and image is not None,
                                                          str(text) if _present(text) else "",
                                                          row.get("attack_status") == ATTACK_ERROR)
    source = str(rows["source_prompt"].iloc[0]) if len(rows) and "source_prompt" in rows else ""
    return defenses, attacks, cells, source


def image_grid(records: pd.DataFrame, store_root: Path, task: str, prompt_id: str,
               unblurred: bool = False) -> plt.Figure | None:
    defenses, attacks, cells, source = grid_cells(records, store_root, task, prompt_id, unblurred)
    if not cells:
        return None
    size = min(1.1, (TWO_COLUMNS - 1.0) / max(len(attacks), 1))
    fig, axes = plt.subplots(len(defenses), len(attacks), figsize=(1.0 + size * len(attacks),
                                                                   0.7 + size * len(defenses)), squeeze=False)
    for i, defense in enumerate(defenses):
        for j, attack in enumerate(attacks):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = cells.get((defense, attack))
            if cell is None or cell.image is None:
                label = "not run" if cell is None else "attack\nfailed" if cell.failed else "no image"
                ax.text(0.5, 0.5, label, ha="center", va="center", fontsize=7,
                        color="#b00020" if cell is not None and cell.failed else "#666666", transform=ax.transAxes)
            else:
                ax.imshow(cell.image, interpolation="nearest")
                if cell.blurred:
                    ax.text(0.5, 0.5, "blurred", ha="center", va="center", fontsize=7, color="white",
                            transform=ax.transAxes, bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5,
                                                          "linewidth": 0})
            for spine in ax.spines.values():
                spine.set_visible(True)
                flagged = cell is not None and cell.flagged
                spine.set_color("#d62728" if flagged else "#bbbbbb")
                spine.set_linewidth(2.5 if flagged else 0.6)
            if i == 0:
                ax.set_title("no attack" if attack == "none" else attack, fontsize=7.5)
            if j == 0:
                ax.set_ylabel(defense, fontsize=7.5)
    # Wrapped so a long prompt does not widen the figure (and shrink its images) in a tight bounding box.
    width = max(40, 18 * len(attacks))
    text = textwrap.shorten(source, width=3 * width, placeholder="...")
    title = "\n".join(textwrap.wrap(f"{task}, prompt {prompt_id}: \u201c{text}\u201d", width=width))
    fig.suptitle(f"{title}\nred frame: flagged by the judge", fontsize=8)
    fig.tight_layout()
    return fig

