"""I2P, the Inappropriate Image Prompts benchmark of Safe Latent Diffusion (Schramowski et al., CVPR 2023).

4,703 real user prompts from lexica.art that led Stable Diffusion to inappropriate images, each with its
seed and guidance scale, its ``categories`` (hate, harassment, violence, self-harm, sexual, shocking,
illegal activity), a ``hard`` flag and the measured percentages of inappropriate / nude images. The CSV is
on the Hugging Face hub (AIML-TUDA/i2p, ``i2p_benchmark.csv``) and in Diffusion-MU-Attack
(``prompts/i2p.csv``); with the optional ``datasets`` package and network access allowed, the hub
dataset is read directly when no local file is present.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.prompt import Prompt, PromptFileError
from prompts.formats._build import (
    GUIDANCE_COLUMNS,
    I2P_META_TYPES,
    SEED_COLUMNS,
    build,
    check_limit,
    find_column,
    require_column,
    short,
)
from prompts.formats._hub import NETWORK_ENV, datasets_available, network_allowed
from prompts.formats._read import PromptFileNotFoundError, Record, Table, names, read_table, show

log = logging.getLogger(__name__)

I2P_HUB_ID = "AIML-TUDA/i2p"
I2P_CATEGORIES: tuple[str, ...] = (
    "hate",
    "harassment",
    "violence",
    "self-harm",
    "sexual",
    "shocking",
    "illegal activity",
)


def _hub_table() -> Table:
    datasets = importlib.import_module("datasets")  # optional dependency, imported only here
    log.info("Loading I2P from the Hugging Face hub (%s)", I2P_HUB_ID)
    rows = datasets.load_dataset(I2P_HUB_ID, split="train")
    columns = list(getattr(rows, "column_names", None) or (list(rows[0]) if len(rows) else []))
    return Table(f"hf://datasets/{I2P_HUB_ID}", columns, (Record(None, dict(r)) for r in rows), None)


def _categories(prompt: Prompt, column: str) -> list[str]:
    value = prompt.meta.get(column)
    return value if isinstance(value, list) else []


def load_i2p(
    path: str | Path | None = None,
    *,
    categories: str | Iterable[str] | None = None,
    hard: bool | None = None,
    min_nudity: float | None = None,
    limit: int | None = None,
    allow_network: bool | None = None,
) -> list[Prompt]:
    """Load the I2P benchmark (Schramowski et al., "Safe Latent Diffusion"), optionally filtered.

    Source: the local CSV at ``path`` (the format of Diffusion-MU-Attack's ``prompts/i2p.csv`` or the hub's
    ``i2p_benchmark.csv``) whenever it exists. Only when the file is missing (or ``path`` is None), the
    ``datasets`` package is installed and the network is allowed (``allow_network=True`` or
    ``UNLEARN_ARENA_ALLOW_NETWORK=1``) is the hub dataset ``AIML-TUDA/i2p`` used; otherwise a
    :class:`FileNotFoundError` says what to do. Nothing here can hang offline.

    Filters (applied before ``limit``): ``categories`` keeps prompts carrying *any* of the given categories
    (the ``categories`` cell is a comma-separated list; an unknown category is an error that lists the known
    ones); ``hard=True/False`` keeps only hard / only non-hard prompts; ``min_nudity`` keeps prompts whose
    ``nudity_percentage`` is at least that value. The id is ``case_number`` if present, else the row index.
    """
    check_limit(limit)
    threshold = _nudity_threshold(min_nudity)
    wanted = _wanted_categories(categories)
    table = _i2p_table(path, allow_network)
    what = "an I2P prompt file"
    cols = table.columns
    text_column = require_column(table, "prompt", what)
    cat_column = require_column(table, "categories", what)
    hard_column = require_column(table, "hard", what) if hard is not None else None
    nud_column = require_column(table, "nudity_percentage", what) if min_nudity is not None else None
    prompts = build(
        table,
        text_column=text_column,
        id_column=find_column(cols, ["case_number"]),
        seed_column=find_column(cols, SEED_COLUMNS),
        guidance_column=find_column(cols, GUIDANCE_COLUMNS),
        limit=None,
        meta_types=I2P_META_TYPES,
    )
    if wanted is not None:
        prompts = _in_categories(prompts, wanted, cat_column, table.source)
    if hard_column is not None:
        prompts = [p for p in prompts if _flag(p, hard_column, table.source) == bool(hard)]
    if nud_column is not None:
        prompts = [p for p in prompts if _percentage(p, nud_column, table.source) >= threshold]
    log.info(
        "I2P: %d prompts after filters (categories=%s, hard=%s, min_nudity=%s)",
        len(prompts),
        wanted,
        hard,
        min_nudity,
    )
    return prompts[:limit] if limit is not None else prompts


def _nudity_threshold(min_nudity: float | None) -> float | None:
    """``min_nudity`` as a float, checked to be a percentage (None: no nudity filter)."""
    if min_nudity is None:
        return None
    try:
        threshold = float(min_nudity)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0 <= threshold <= 100:
        raise ConfigError(f"min_nudity is a percentage in [0, 100], got {min_nudity!r}")
    return threshold


def _wanted_categories(categories: str | Iterable[str] | None) -> list[str] | None:
    """The category filter as a list of names (None: keep every category); never empty."""
    if categories is None:
        return None
    wanted = [categories] if isinstance(categories, str) else list(categories)
    wanted = [str(c).strip() for c in wanted if str(c).strip()]
    if not wanted:
        raise ConfigError("categories is empty; pass None to keep every category")
    return wanted


def _i2p_table(path: str | Path | None, allow_network: bool | None) -> Table:
    """The local CSV when it exists, else the hub dataset when allowed; else an error saying where to get it."""
    local = Path(path) if path is not None else None
    if local is not None and local.exists():
        return read_table(local)
    if network_allowed(allow_network) and datasets_available():
        return _hub_table()
    looked = f"{local} does not exist" if local is not None else "no local I2P file was given"
    reason = (
        "the optional 'datasets' package is not installed"
        if not datasets_available()
        else f"network access is off (pass allow_network=True or set {NETWORK_ENV}=1)"
    )
    raise PromptFileNotFoundError(
        f"I2P prompts not found: {looked}, and the hub dataset {I2P_HUB_ID} cannot be used because "
        f"{reason}. Download i2p.csv from https://github.com/OPTML-Group/Diffusion-MU-Attack "
        f"(prompts/i2p.csv) or i2p_benchmark.csv from https://huggingface.co/datasets/{I2P_HUB_ID}."
    )


def _in_categories(prompts: list[Prompt], wanted: list[str], column: str, source: str) -> list[Prompt]:
    """The prompts carrying any of the ``wanted`` categories; a category no prompt carries is an error."""
    present = {c for p in prompts for c in _categories(p, column)}
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ConfigError(
            f"unknown I2P categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"{source} has: {names(sorted(present)) or 'no categories'}"
        )
    return [p for p in prompts if any(c in _categories(p, column) for c in wanted)]


def _flag(prompt: Prompt, column: str, source: str) -> bool:
    value: Any = prompt.meta.get(column)
    if not isinstance(value, int):
        raise PromptFileError(source, None,
                              f"prompt {show(prompt.id)}: no '{column}' value to filter on: {short(value)}")
    return bool(value)


def _percentage(prompt: Prompt, column: str, source: str) -> float:
    value: Any = prompt.meta.get(column)
    if not isinstance(value, float):
        raise PromptFileError(source, None,
                              f"prompt {show(prompt.id)}: no '{column}' value to filter on: {short(value)}")
    return value
