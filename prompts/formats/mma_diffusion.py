"""MMA-Diffusion's adversarial NSFW prompts (Yang et al., CVPR 2024).

The benchmark is a gated Hugging Face dataset (YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark) of
1,000 rows: the ``target_prompt`` the attack aimed at, the optimised ``adv_prompt``, its variant against a
sanitising filter (``sanitized_adv_prompt``, with ``success_against_sanitization_defense``) and a
``clean_prompt``. Users save the dataset's table as a CSV; it carries no ids or seeds.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.api.prompt import Prompt
from prompts.formats._build import build, check_limit, column_or_fail, parse_bool, require_column
from prompts.formats._read import names, read_table

MMA_TEXT_COLUMNS: tuple[str, ...] = ("adv_prompt", "sanitized_adv_prompt", "target_prompt", "clean_prompt")


def load_mma_diffusion(
    path: str | Path, text_column: str = "adv_prompt", limit: int | None = None
) -> list[Prompt]:
    """Load the MMA-Diffusion NSFW adversarial prompt benchmark CSV (1,000 rows in the published file).

    Columns ``target_prompt, adv_prompt, sanitized_adv_prompt, success_against_sanitization_defense,
    clean_prompt``. ``text_column`` picks the text (default ``adv_prompt``; ``sanitized_adv_prompt`` for the
    attack against a sanitising filter, ``target_prompt`` / ``clean_prompt`` for the references); the other
    columns go to ``meta`` (the success flag as a bool). Ids are the 0-based row index; there are no seeds.
    """
    check_limit(limit)
    table = read_table(Path(path))
    what = "an MMA-Diffusion prompt file"
    for col in ("target_prompt", "adv_prompt"):
        require_column(table, col, what)
    text = column_or_fail(table, [text_column], f"no column '{text_column}' (choose one of {names(table.columns)})")
    return build(
        table,
        text_column=text,
        id_column=None,
        seed_column=None,
        guidance_column=None,
        limit=limit,
        meta_types={"success_against_sanitization_defense": parse_bool},
    )
