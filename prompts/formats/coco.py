"""Benign COCO captions: the utility prompts that measure what a defense costs on ordinary images.

The file is Diffusion-MU-Attack's ``prompts/coco_10k.csv``: about ten thousand MS-COCO captions with the
COCO image id as ``case_number`` (leading zeros and all), the caption as ``prompt``, a ``source`` column
and an ``evaluation_seed``. Any CSV with a ``prompt`` or ``caption`` column loads the same way.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.api.prompt import Prompt
from prompts.formats._build import (
    GUIDANCE_COLUMNS,
    ID_COLUMNS,
    SEED_COLUMNS,
    build,
    check_limit,
    find_column,
    require_column,
)
from prompts.formats._read import read_table


def load_coco_captions(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load a benign COCO caption CSV (Diffusion-MU-Attack ``prompts/coco_10k.csv``:
    ``case_number, source, prompt, evaluation_seed``). Ids are the COCO image ids with their leading zeros."""
    check_limit(limit)
    table = read_table(Path(path))
    what = "a COCO caption file"
    return build(
        table,
        text_column=find_column(table.columns, ["prompt", "caption"]) or require_column(table, "prompt", what),
        id_column=find_column(table.columns, ID_COLUMNS),
        seed_column=find_column(table.columns, SEED_COLUMNS),
        guidance_column=find_column(table.columns, GUIDANCE_COLUMNS),
        limit=limit,
    )
