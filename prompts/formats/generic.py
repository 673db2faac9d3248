"""Any prompt file a user brings: CSV, TSV, JSON, JSONL or plain text, told apart by the file's suffix.

These are the files people write by hand or export from a spreadsheet or a script: a list of prompts,
perhaps with an id, a seed and a guidance scale per prompt. The prompt column is found by name
(``prompt``, ``adv_prompt``, ``text``, ``caption``) unless one is given. The published benchmark files
(UnlearnDiff, I2P, MMA-Diffusion, Ring-A-Bell, COCO) have format modules of their own.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.api.errors import ConfigError
from benchmark.api.prompt import Prompt
from prompts.formats._build import build, check_limit, standard_columns
from prompts.formats._read import file_format, read_table


def load_prompt_file(path: str | Path, column: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Load prompts from a CSV, TSV, JSON, JSONL or TXT file (chosen by the file's suffix).

    * TXT: one prompt per non-empty line; ids are the 0-based prompt index.
    * JSON: a list of prompt strings, or a list of objects; JSONL: one string or object per line.
    * CSV / TSV / objects: the prompt column is ``column`` if given, else the first of
      ``prompt, adv_prompt, text, caption`` present (case-insensitive). The id comes from ``case_number`` /
      ``id`` (else the 0-based record index), the seed from ``evaluation_seed`` / ``seed``, the guidance
      scale from ``evaluation_guidance`` / ``guidance``; every other column goes to ``meta``.

    ``limit`` keeps the first ``limit`` prompts. Raises :class:`PromptFileError` (file and line) on
    malformed input and :class:`~prompts.PromptFileNotFoundError` (a :class:`FileNotFoundError`) when the
    file does not exist.
    """
    check_limit(limit)
    path = Path(path)
    table = read_table(path)
    if column is not None and file_format(path) == "txt":
        raise ConfigError(f"{path}: a .txt prompt file has no columns; do not pass column={column!r}")
    return build(table, limit=limit, **standard_columns(table, column))  # type: ignore[arg-type]
