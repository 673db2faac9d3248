"""UnlearnDiff prompt CSVs, as published with the attack in OPTML-Group's Diffusion-MU-Attack repository.

Each file (``prompts/nudity.csv``, ``vangogh.csv``, ``church.csv``, ...) lists the prompts of one concept
with the seed and guidance scale the paper evaluated each prompt with: ``case_number, prompt,
evaluation_seed`` and usually ``evaluation_guidance``. The nudity, violence and illegal-activity files were
drawn from I2P and keep its columns and a pandas index column.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.api.prompt import Prompt
from prompts.formats._build import I2P_META_TYPES, build, check_limit, find_column, require_column
from prompts.formats._read import read_table


def load_unlearndiff(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load an UnlearnDiff prompt CSV (OPTML-Group/Diffusion-MU-Attack ``prompts/*.csv``).

    Columns ``case_number, prompt, evaluation_seed`` and usually ``evaluation_guidance``; the I2P-derived
    files (nudity, violence, illegal) add an ``Unnamed: 0`` pandas index and the I2P columns, which are kept
    in ``meta`` (``categories`` as a list of strings, percentages as floats, ``hard`` as an int).
    """
    check_limit(limit)
    table = read_table(Path(path))
    what = "an UnlearnDiff prompt file"
    return build(
        table,
        text_column=require_column(table, "prompt", what),
        id_column=require_column(table, "case_number", what),
        seed_column=require_column(table, "evaluation_seed", what),
        guidance_column=find_column(table.columns, ["evaluation_guidance"]),
        limit=limit,
        meta_types=I2P_META_TYPES,
    )
