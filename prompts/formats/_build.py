"""Turning a table's records into :class:`Prompt` s (shared by every format module; private).

Conventions shared by all loaders:

* ``Prompt.id`` is the file's ``case_number`` / ``id`` column as a string (leading zeros kept, so COCO image
  ids survive), else the 0-based index of the record in the file. Ids are unique within a file.
* ``Prompt.seed`` / ``Prompt.guidance`` come from ``evaluation_seed`` / ``evaluation_guidance`` (also ``seed``,
  ``sd_seed`` / ``guidance``, ``guidance_scale``, ``sd_guidance_scale``); None when the file has no such column.
  A present but empty or malformed value is an error.
* Prompt text has its outer whitespace removed (CLIP's tokenizer ignores it; some COCO captions end in a
  stray CRLF inside the quotes); inner text, including newlines inside I2P prompts, is kept verbatim.
* Every column not consumed above is kept in ``Prompt.meta`` under its own name.

No prompt is ever dropped silently: a record that cannot become a prompt is an error naming the file and
line, and the only records left out are those an explicit filter or ``limit`` asks to leave out.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.prompt import Prompt, PromptFileError
from prompts.formats._read import Table, names, show

TEXT_COLUMNS: tuple[str, ...] = ("prompt", "adv_prompt", "text", "caption")
"""Columns auto-detected as the prompt text, in order of preference (matched case-insensitively)."""
ID_COLUMNS: tuple[str, ...] = ("case_number", "id")
SEED_COLUMNS: tuple[str, ...] = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS: tuple[str, ...] = ("evaluation_guidance", "guidance", "guidance_scale", "sd_guidance_scale")
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def find_column(columns: Sequence[str], candidates: Iterable[str]) -> str | None:
    """The first candidate present in ``columns`` (exact name first, then case-insensitive)."""
    lowered: dict[str, str] = {}
    for c in columns:
        lowered.setdefault(c.lower(), c)
    for cand in candidates:
        if cand in columns:
            return cand
        if cand.lower() in lowered:
            return lowered[cand.lower()]
    return None


def column_or_fail(table: Table, candidates: Iterable[str], message: str) -> str:
    """The first of ``candidates`` the table has (:func:`find_column`), else an error at its header line."""
    found = find_column(table.columns, candidates)
    if found is None:
        raise PromptFileError(table.source, table.header_line, message)
    return found


def require_column(table: Table, name: str, what: str) -> str:
    return column_or_fail(table, [name],
                          f"not {what}: it has no '{name}' column (columns found: {names(table.columns) or 'none'})")


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_int(value: Any) -> int:
    """An integer from a file cell: '42', 42, '42.0' (pandas round-trips) are fine; '4.5', 'x', True are not."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError("not an integer")
    s = str(value).strip()
    if len(s) > 40:  # also keeps int() away from its digit limit
        raise ValueError("not an integer of a sensible size")
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?\d+\.0*", s):
        return int(s.split(".")[0])
    raise ValueError("not an integer")


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # float() of a huge int
        raise ValueError("too large a number") from None
    if not math.isfinite(out):
        raise ValueError("not a finite number")
    return out


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    raise ValueError("not a boolean (expected True/False)")


def parse_categories(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [c.strip() for c in str(value).split(",") if c.strip()]


# I2P-style columns (I2P and the UnlearnDiff CSVs derived from it) get typed meta values.
I2P_META_TYPES: dict[str, Callable[[Any], Any]] = {
    "categories": parse_categories,
    "hard": parse_int,
    "inappropriate_percentage": parse_float,
    "nudity_percentage": parse_float,
    "q16_percentage": parse_float,
    "sd_safety_percentage": parse_float,
    "prompt_toxicity": parse_float,
    "sd_image_width": parse_int,
    "sd_image_height": parse_int,
}


def _error(source: str, line: int | None, label: str, message: str) -> PromptFileError:
    return PromptFileError(source, line, label + message)


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates (JSON's "\\ud800"), which no file or tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


Fail = Callable[[str], PromptFileError]
"""Makes the error of one record: its message is prefixed with the row when the file has no line numbers."""


def build(
    table: Table,
    *,
    text_column: str,
    id_column: str | None,
    seed_column: str | None,
    guidance_column: str | None,
    limit: int | None,
    meta_types: Mapping[str, Callable[[Any], Any]] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> list[Prompt]:
    """The table's prompts (the first ``limit``), checked record by record; errors name file and line."""
    src = table.source
    used = {c for c in (text_column, id_column, seed_column, guidance_column) if c is not None}
    prompts: list[Prompt] = []
    first_seen: dict[str, int | None] = {}
    for index, rec in enumerate(table.records):
        if limit is not None and len(prompts) >= limit:
            break
        line, values = rec.line, rec.values
        fail: Fail = functools.partial(_error, src, line, "" if line is not None else f"row {index}: ")
        for col in sorted(used):
            if col not in values:
                raise fail(f"the record lacks the column '{col}'")
        text = _prompt_text(values, text_column, fail)
        pid = _prompt_id(values, id_column, index, fail)
        if pid in first_seen:
            first = first_seen[pid]
            where = f"line {first}" if first is not None else "an earlier row"
            raise fail(f"duplicate id '{show(pid)}' (first used at {where}); ids must be unique")
        first_seen[pid] = line
        seed = None if seed_column is None else _seed(values, seed_column, fail)
        guidance = None if guidance_column is None else _number_cell(
            values, guidance_column, "guidance scale", parse_float, "a number", fail)
        meta = _meta(values, used, meta_types or {}, extra_meta or {}, fail)
        prompts.append(Prompt(id=pid, text=text, seed=seed, guidance=guidance, meta=meta))
    if not prompts and limit != 0:
        raise PromptFileError(src, None, "contains no prompts")
    return prompts


def _prompt_text(values: Mapping[str, Any], column: str, fail: Fail) -> str:
    """The record's prompt, outer whitespace removed; not empty, valid Unicode."""
    text = values[column]
    if not isinstance(text, str):
        raise fail(f"the prompt in column '{column}' must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise fail(f"empty prompt text in column '{column}'")
    if not _is_unicode(text):
        raise fail(f"the prompt in column '{column}' is not valid Unicode (a lone surrogate)")
    return text


def _prompt_id(values: Mapping[str, Any], column: str | None, index: int, fail: Fail) -> str:
    """The record's id column as a string (a float that is an integer loses its ``.0``), else its index."""
    if column is None:
        return str(index)
    raw_id = values[column]
    if isinstance(raw_id, bool) or is_empty(raw_id) or isinstance(raw_id, (dict, list)):
        raise fail(f"empty or invalid id in column '{column}': {raw_id!r}")
    if isinstance(raw_id, float) and raw_id.is_integer():
        raw_id = int(raw_id)
    pid = str(raw_id).strip()
    if not _is_unicode(pid):
        raise fail(f"the id in column '{column}' is not valid Unicode (a lone surrogate)")
    return pid


def _number_cell(values: Mapping[str, Any], column: str, what: str, parse: Callable[[Any], Any], kind: str,
                 fail: Fail) -> Any:
    """``parse`` of the record's cell; an error naming ``what`` when the cell is empty or not ``kind``."""
    raw = values[column]
    if is_empty(raw):
        raise fail(f"empty {what} in column '{column}'")
    try:
        return parse(raw)
    except (TypeError, ValueError):
        raise fail(f"{what} {short(raw)} in column '{column}' is not {kind}") from None


def _seed(values: Mapping[str, Any], column: str, fail: Fail) -> int:
    """The record's seed: an integer in what ``torch.Generator.manual_seed`` accepts."""
    seed = _number_cell(values, column, "seed", parse_int, "an integer", fail)
    if seed < 0:
        raise fail(f"seed {short(values[column])} in column '{column}' is negative")
    if seed > MAX_SEED:
        raise fail(f"seed {short(values[column])} in column '{column}' is larger than 2**64 - 1")
    return seed


def _meta(values: Mapping[str, Any], used: set[str], meta_types: Mapping[str, Callable[[Any], Any]],
          extra_meta: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """``extra_meta`` and every column not consumed, typed by ``meta_types`` where it names the column."""
    meta: dict[str, Any] = dict(extra_meta)
    for key, value in values.items():
        if key in used:
            continue
        convert = meta_types.get(key)
        if convert is not None and not is_empty(value):
            try:
                value = convert(value)
            except (TypeError, ValueError) as exc:
                raise fail(f"bad value {short(value)} in column '{key}': {exc}") from None
        meta[key] = value
    return meta


def short(value: Any, width: int = 60) -> str:
    """A cell's repr for a one-line message (long cells cut)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")


def standard_columns(table: Table, column: str | None) -> dict[str, str | None]:
    """The text / id / seed / guidance columns of a generic prompt file (``column`` picks the text)."""
    if column is not None:
        text_column = column_or_fail(table, [column],
                                     f"no column '{column}' (columns found: {names(table.columns) or 'none'})")
    else:
        text_column = column_or_fail(
            table, TEXT_COLUMNS,
            f"no recognisable prompt column (looked for {', '.join(TEXT_COLUMNS)}; columns found: "
            f"{names(table.columns) or 'none'}); pass --prompt-column NAME (column=NAME in Python) to choose one")
    return {
        "text_column": text_column,
        "id_column": find_column(table.columns, ID_COLUMNS),
        "seed_column": find_column(table.columns, SEED_COLUMNS),
        "guidance_column": find_column(table.columns, GUIDANCE_COLUMNS),
    }
