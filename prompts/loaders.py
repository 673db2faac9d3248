"""Loaders for prompt files: the published attack / benchmark formats and any user file.

Every loader returns ``list[Prompt]`` (see :mod:`prompts.base`) in file order and raises
:class:`~prompts.base.PromptFileError` naming the file and the 1-based physical line of the offending record
on malformed input. No prompt is ever dropped silently: a row that cannot become a prompt is an error, and
the only rows left out are those an explicit filter (I2P categories, ``hard``, ``min_nudity``) or ``limit``
asks to leave out.

Conventions shared by all loaders:

* ``Prompt.id`` is the file's ``case_number`` / ``id`` column as a string (leading zeros kept, so COCO image
  ids survive), else the 0-based index of the record in the file.
* ``Prompt.seed`` / ``Prompt.guidance`` come from ``evaluation_seed`` / ``evaluation_guidance`` (also ``seed``,
  ``sd_seed`` / ``guidance``, ``guidance_scale``, ``sd_guidance_scale``); None when the file has no such column.
  A present but empty or malformed value is an error.
* Prompt text has its outer whitespace removed (CLIP's tokenizer ignores it; some COCO captions end in a
  stray CRLF inside the quotes); inner text, including newlines inside I2P prompts, is kept verbatim.
* Every column not consumed above is kept in ``Prompt.meta`` under its own name.

CSV is read with the :mod:`csv` module (not pandas) so that line numbers are exact, including records whose
quoted fields span several lines.
"""

from __future__ import annotations

import csv
import functools
import importlib
import importlib.util
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prompts.base import Prompt, PromptFileError

if TYPE_CHECKING:  # numpy is imported lazily by load_concept_vector
    import numpy as np

log = logging.getLogger(__name__)

TEXT_COLUMNS: tuple[str, ...] = ("prompt", "adv_prompt", "text", "caption")
"""Columns auto-detected as the prompt text, in order of preference (matched case-insensitively)."""
ID_COLUMNS: tuple[str, ...] = ("case_number", "id")
SEED_COLUMNS: tuple[str, ...] = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS: tuple[str, ...] = ("evaluation_guidance", "guidance", "guidance_scale", "sd_guidance_scale")

SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}

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
MMA_TEXT_COLUMNS: tuple[str, ...] = ("adv_prompt", "sanitized_adv_prompt", "target_prompt", "clean_prompt")
NETWORK_ENV = "UNLEARN_ARENA_ALLOW_NETWORK"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Record:
    line: int | None  # 1-based physical line where the record starts; None for in-memory rows (hub)
    values: dict[str, Any]


@dataclass
class _Table:
    source: str  # the file path, or a hub address, as shown in error messages
    columns: list[str]
    records: Iterator[_Record]
    header_line: int | None = 1


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"Prompt file not found: {path}")
    if not path.is_file():
        raise PromptFileError(path, None, "is not a file")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptFileError(
            path, line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def _file_format(path: Path) -> str:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PromptFileError(
            path,
            None,
            f"unknown prompt file type '{path.suffix}'; use one of {', '.join(sorted(SUFFIX_FORMATS))}",
        )
    return fmt


def _read_csv(path: Path, delimiter: str = ",") -> _Table:
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
    except csv.Error as exc:
        raise PromptFileError(path, reader.line_num, f"malformed CSV header: {exc}") from None
    if header is None:
        raise PromptFileError(path, None, "the file is empty (expected a header row and prompt rows)")
    header_line = reader.line_num
    # An unnamed column (a pandas index written without a name) is called "Unnamed: <i>", as pandas does.
    columns = [c.strip() or f"Unnamed: {i}" for i, c in enumerate(header)]
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise PromptFileError(path, header_line, f"duplicate column(s) {', '.join(dupes)} in the header")

    def records() -> Iterator[_Record]:
        prev_end = header_line
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise PromptFileError(
                    path, prev_end + 1, f"malformed CSV (check the quoting of this record): {exc}"
                ) from None
            start, prev_end = prev_end + 1, reader.line_num
            if not row:  # a blank line between records
                continue
            if len(row) != len(columns):
                raise PromptFileError(
                    path,
                    start,
                    f"row has {len(row)} fields but the header has {len(columns)} ({', '.join(columns)}); "
                    "quote fields that contain the delimiter",
                )
            yield _Record(start, dict(zip(columns, row, strict=True)))

    return _Table(str(path), columns, records(), header_line)


def _read_txt(path: Path) -> _Table:
    text = _decode(path)

    def records() -> Iterator[_Record]:
        for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
            if line.strip():
                yield _Record(lineno, {"prompt": line.strip()})

    return _Table(str(path), ["prompt"], records(), None)


def _objects_table(source: str, items: list[tuple[int | None, Any]]) -> _Table:
    """Turn a list of JSON values (all strings, or all objects) into a table."""
    if not items:
        return _Table(source, [], iter(()), None)
    first_line, first = items[0]
    if isinstance(first, str):
        kind = "string"
        columns = ["prompt"]
    elif isinstance(first, dict):
        kind = "object"
        columns = list(first)
    else:
        raise PromptFileError(
            source, first_line, f"expected a prompt string or an object, got {type(first).__name__}"
        )

    def records() -> Iterator[_Record]:
        for line, value in items:
            if kind == "string":
                if not isinstance(value, str):
                    raise PromptFileError(
                        source,
                        line,
                        f"expected a prompt string like the first entry, got {type(value).__name__}",
                    )
                yield _Record(line, {"prompt": value})
            else:
                if not isinstance(value, dict):
                    raise PromptFileError(
                        source, line, f"expected an object like the first entry, got {type(value).__name__}"
                    )
                yield _Record(line, value)

    return _Table(source, columns, records(), first_line)


def _read_json(path: Path) -> _Table:
    text = _decode(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise PromptFileError(
            path, 1, f"expected a JSON list of prompt strings or objects, got a {type(data).__name__}"
        )
    # Walk the (already validated) array once more to learn the line on which each element starts.
    decoder = json.JSONDecoder()
    items: list[tuple[int | None, Any]] = []
    pos, line, counted = text.index("[") + 1, 1, 0
    ws = re.compile(r"[\s,]*")
    for _ in range(len(data)):
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        line += text.count("\n", counted, pos)
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        items.append((line, value))
    return _objects_table(str(path), items)


def _read_jsonl(path: Path) -> _Table:
    text = _decode(path)
    items: list[tuple[int | None, Any]] = []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            items.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PromptFileError(path, lineno, f"not valid JSON: {exc.msg}") from None
    return _objects_table(str(path), items)


def _read_table(path: Path) -> _Table:
    _check_file(path)
    fmt = _file_format(path)
    if fmt == "csv":
        return _read_csv(path, ",")
    if fmt == "tsv":
        return _read_csv(path, "\t")
    if fmt == "json":
        return _read_json(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_txt(path)


# --------------------------------------------------------------------------------------------------------
# Building prompts
# --------------------------------------------------------------------------------------------------------
def _find_column(columns: Sequence[str], candidates: Iterable[str]) -> str | None:
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


def _require_column(table: _Table, name: str, what: str) -> str:
    found = _find_column(table.columns, [name])
    if found is None:
        raise PromptFileError(
            table.source,
            table.header_line,
            f"not {what}: it has no '{name}' column (columns found: {', '.join(table.columns) or 'none'})",
        )
    return found


def _row_label(line: int | None, index: int) -> str:
    return "" if line is not None else f"row {index}: "


def _error(source: str, line: int | None, label: str, message: str) -> PromptFileError:
    return PromptFileError(source, line, label + message)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_int(value: Any) -> int:
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
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?\d+\.0*", s):
        return int(s.split(".")[0])
    raise ValueError("not an integer")


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    out = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(out):
        raise ValueError("not a finite number")
    return out


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("not a boolean (expected True/False)")


def _parse_categories(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [c.strip() for c in str(value).split(",") if c.strip()]


# I2P-style columns (I2P and the UnlearnDiff CSVs derived from it) get typed meta values.
I2P_META_TYPES: dict[str, Callable[[Any], Any]] = {
    "categories": _parse_categories,
    "hard": _parse_int,
    "inappropriate_percentage": _parse_float,
    "nudity_percentage": _parse_float,
    "q16_percentage": _parse_float,
    "sd_safety_percentage": _parse_float,
    "prompt_toxicity": _parse_float,
    "sd_image_width": _parse_int,
    "sd_image_height": _parse_int,
}


def _build(
    table: _Table,
    *,
    text_column: str,
    id_column: str | None,
    seed_column: str | None,
    guidance_column: str | None,
    limit: int | None,
    meta_types: Mapping[str, Callable[[Any], Any]] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> list[Prompt]:
    src = table.source
    used = {c for c in (text_column, id_column, seed_column, guidance_column) if c is not None}
    prompts: list[Prompt] = []
    first_seen: dict[str, int | None] = {}
    for index, rec in enumerate(table.records):
        if limit is not None and len(prompts) >= limit:
            break
        line, values = rec.line, rec.values
        label = _row_label(line, index)
        fail = functools.partial(_error, src, line, label)

        for col in used:
            if col not in values:
                raise fail(f"the record lacks the column '{col}'")
        text = values[text_column]
        if not isinstance(text, str):
            raise fail(f"the prompt in column '{text_column}' must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise fail(f"empty prompt text in column '{text_column}'")

        if id_column is not None:
            raw_id = values[id_column]
            if isinstance(raw_id, bool) or _is_empty(raw_id) or isinstance(raw_id, (dict, list)):
                raise fail(f"empty or invalid id in column '{id_column}': {raw_id!r}")
            if isinstance(raw_id, float) and raw_id.is_integer():
                raw_id = int(raw_id)
            pid = str(raw_id).strip()
        else:
            pid = str(index)
        if pid in first_seen:
            first = first_seen[pid]
            where = f"line {first}" if first is not None else "an earlier row"
            raise fail(f"duplicate id '{pid}' (first used at {where}); ids must be unique")
        first_seen[pid] = line

        seed = None
        if seed_column is not None:
            raw = values[seed_column]
            if _is_empty(raw):
                raise fail(f"empty seed in column '{seed_column}'")
            try:
                seed = _parse_int(raw)
            except (TypeError, ValueError):
                raise fail(f"seed {raw!r} in column '{seed_column}' is not an integer") from None
            if seed < 0:
                raise fail(f"seed {raw!r} in column '{seed_column}' is negative")

        guidance = None
        if guidance_column is not None:
            raw = values[guidance_column]
            if _is_empty(raw):
                raise fail(f"empty guidance scale in column '{guidance_column}'")
            try:
                guidance = _parse_float(raw)
            except (TypeError, ValueError):
                raise fail(f"guidance scale {raw!r} in column '{guidance_column}' is not a number") from None

        meta: dict[str, Any] = dict(extra_meta or {})
        for key, value in values.items():
            if key in used:
                continue
            convert = (meta_types or {}).get(key)
            if convert is not None and not _is_empty(value):
                try:
                    value = convert(value)
                except (TypeError, ValueError) as exc:
                    raise fail(f"bad value {value!r} in column '{key}': {exc}") from None
            meta[key] = value
        prompts.append(Prompt(id=pid, text=text, seed=seed, guidance=guidance, meta=meta))
    if not prompts and limit != 0:
        raise PromptFileError(src, None, "contains no prompts")
    return prompts


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")


def _standard_columns(table: _Table, column: str | None) -> dict[str, str | None]:
    if column is not None:
        text_column = _find_column(table.columns, [column])
        if text_column is None:
            raise PromptFileError(
                table.source,
                table.header_line,
                f"no column '{column}' (columns found: {', '.join(table.columns) or 'none'})",
            )
    else:
        text_column = _find_column(table.columns, TEXT_COLUMNS)
        if text_column is None:
            raise PromptFileError(
                table.source,
                table.header_line,
                f"no recognisable prompt column (looked for {', '.join(TEXT_COLUMNS)}; columns found: "
                f"{', '.join(table.columns) or 'none'}); pass --prompt-column NAME "
                "(column=NAME in Python) to choose one",
            )
    return {
        "text_column": text_column,
        "id_column": _find_column(table.columns, ID_COLUMNS),
        "seed_column": _find_column(table.columns, SEED_COLUMNS),
        "guidance_column": _find_column(table.columns, GUIDANCE_COLUMNS),
    }


# --------------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------------
def load_prompt_file(path: str | Path, column: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Load prompts from a CSV, TSV, JSON, JSONL or TXT file (chosen by the file's suffix).

    * TXT: one prompt per non-empty line; ids are the 0-based prompt index.
    * JSON: a list of prompt strings, or a list of objects; JSONL: one string or object per line.
    * CSV / TSV / objects: the prompt column is ``column`` if given, else the first of
      ``prompt, adv_prompt, text, caption`` present (case-insensitive). The id comes from ``case_number`` /
      ``id`` (else the 0-based record index), the seed from ``evaluation_seed`` / ``seed``, the guidance
      scale from ``evaluation_guidance`` / ``guidance``; every other column goes to ``meta``.

    ``limit`` keeps the first ``limit`` prompts. Raises :class:`PromptFileError` (file and line) on
    malformed input and :class:`FileNotFoundError` when the file does not exist.
    """
    _check_limit(limit)
    path = Path(path)
    table = _read_table(path)
    if column is not None and _file_format(path) == "txt":
        raise ValueError(f"{path}: a .txt prompt file has no columns; do not pass column={column!r}")
    return _build(table, limit=limit, **_standard_columns(table, column))  # type: ignore[arg-type]


def load_unlearndiff(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load an UnlearnDiff prompt CSV (OPTML-Group/Diffusion-MU-Attack ``prompts/*.csv``).

    Columns ``case_number, prompt, evaluation_seed`` and usually ``evaluation_guidance``; the I2P-derived
    files (nudity, violence, illegal) add an ``Unnamed: 0`` pandas index and the I2P columns, which are kept
    in ``meta`` (``categories`` as a list of strings, percentages as floats, ``hard`` as an int).
    """
    _check_limit(limit)
    table = _read_table(Path(path))
    what = "an UnlearnDiff prompt file"
    return _build(
        table,
        text_column=_require_column(table, "prompt", what),
        id_column=_require_column(table, "case_number", what),
        seed_column=_require_column(table, "evaluation_seed", what),
        guidance_column=_find_column(table.columns, ["evaluation_guidance"]),
        limit=limit,
        meta_types=I2P_META_TYPES,
    )


def network_allowed(allow_network: bool | None = None) -> bool:
    """Whether a loader may reach the network: ``allow_network`` if given, else the environment variable
    ``UNLEARN_ARENA_ALLOW_NETWORK`` (1/true/yes). ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` veto it."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False
    if allow_network is not None:
        return bool(allow_network)
    return os.environ.get(NETWORK_ENV, "").strip().lower() in _TRUE


def datasets_available() -> bool:
    """Whether the optional ``datasets`` package is installed (it is never imported at module import)."""
    return importlib.util.find_spec("datasets") is not None


def _i2p_hub_table() -> _Table:
    datasets = importlib.import_module("datasets")  # optional dependency, imported only here
    log.info("Loading I2P from the Hugging Face hub (%s)", I2P_HUB_ID)
    rows = datasets.load_dataset(I2P_HUB_ID, split="train")
    columns = list(getattr(rows, "column_names", None) or (list(rows[0]) if len(rows) else []))
    return _Table(f"hf://datasets/{I2P_HUB_ID}", columns, (_Record(None, dict(r)) for r in rows), None)


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
    _check_limit(limit)
    if min_nudity is not None and not 0 <= float(min_nudity) <= 100:
        raise ValueError(f"min_nudity is a percentage in [0, 100], got {min_nudity!r}")
    wanted: list[str] | None = None
    if categories is not None:
        wanted = [categories] if isinstance(categories, str) else list(categories)
        wanted = [c.strip() for c in wanted if c.strip()]
        if not wanted:
            raise ValueError("categories is empty; pass None to keep every category")

    local = Path(path) if path is not None else None
    if local is not None and local.exists():
        table = _read_table(local)
    elif network_allowed(allow_network) and datasets_available():
        table = _i2p_hub_table()
    else:
        looked = f"{local} does not exist" if local is not None else "no local I2P file was given"
        reason = (
            "the optional 'datasets' package is not installed"
            if not datasets_available()
            else f"network access is off (pass allow_network=True or set {NETWORK_ENV}=1)"
        )
        raise FileNotFoundError(
            f"I2P prompts not found: {looked}, and the hub dataset {I2P_HUB_ID} cannot be used because "
            f"{reason}. Download i2p.csv from https://github.com/OPTML-Group/Diffusion-MU-Attack "
            f"(prompts/i2p.csv) or i2p_benchmark.csv from https://huggingface.co/datasets/{I2P_HUB_ID}."
        )

    what = "an I2P prompt file"
    cols = table.columns
    text_column = _require_column(table, "prompt", what)
    cat_column = _require_column(table, "categories", what)
    hard_column = _require_column(table, "hard", what) if hard is not None else None
    nud_column = _require_column(table, "nudity_percentage", what) if min_nudity is not None else None
    prompts = _build(
        table,
        text_column=text_column,
        id_column=_find_column(cols, ["case_number"]),
        seed_column=_find_column(cols, SEED_COLUMNS),
        guidance_column=_find_column(cols, GUIDANCE_COLUMNS),
        limit=None,
        meta_types=I2P_META_TYPES,
    )
    if wanted is not None:
        present = {c for p in prompts for c in p.meta.get(cat_column) or []}
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise ValueError(
                f"unknown I2P categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                f"the file has: {', '.join(sorted(present))}"
            )
        prompts = [p for p in prompts if any(c in (p.meta.get(cat_column) or []) for c in wanted)]
    if hard_column is not None:
        prompts = [p for p in prompts if bool(p.meta.get(hard_column)) == bool(hard)]
    if nud_column is not None:
        prompts = [p for p in prompts if (p.meta.get(nud_column) or 0.0) >= float(min_nudity)]  # type: ignore[arg-type]
    log.info(
        "I2P: %d prompts after filters (categories=%s, hard=%s, min_nudity=%s)",
        len(prompts),
        wanted,
        hard,
        min_nudity,
    )
    return prompts[:limit] if limit is not None else prompts


def load_mma_diffusion(
    path: str | Path, text_column: str = "adv_prompt", limit: int | None = None
) -> list[Prompt]:
    """Load the MMA-Diffusion NSFW adversarial prompt benchmark CSV (1,000 rows in the published file).

    Columns ``target_prompt, adv_prompt, sanitized_adv_prompt, success_against_sanitization_defense,
    clean_prompt``. ``text_column`` picks the text (default ``adv_prompt``; ``sanitized_adv_prompt`` for the
    attack against a sanitising filter, ``target_prompt`` / ``clean_prompt`` for the references); the other
    columns go to ``meta`` (the success flag as a bool). Ids are the 0-based row index; there are no seeds.
    """
    _check_limit(limit)
    table = _read_table(Path(path))
    what = "an MMA-Diffusion prompt file"
    for col in ("target_prompt", "adv_prompt"):
        _require_column(table, col, what)
    text = _find_column(table.columns, [text_column])
    if text is None:
        raise PromptFileError(
            table.source,
            table.header_line,
            f"no column '{text_column}' (choose one of {', '.join(c for c in table.columns)})",
        )
    return _build(
        table,
        text_column=text,
        id_column=None,
        seed_column=None,
        guidance_column=None,
        limit=limit,
        meta_types={"success_against_sanitization_defense": _parse_bool},
    )


def load_coco_captions(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load a benign COCO caption CSV (Diffusion-MU-Attack ``prompts/coco_10k.csv``:
    ``case_number, source, prompt, evaluation_seed``). Ids are the COCO image ids with their leading zeros."""
    _check_limit(limit)
    table = _read_table(Path(path))
    what = "a COCO caption file"
    return _build(
        table,
        text_column=_find_column(table.columns, ["prompt", "caption"])
        or _require_column(table, "prompt", what),
        id_column=_find_column(table.columns, ID_COLUMNS),
        seed_column=_find_column(table.columns, SEED_COLUMNS),
        guidance_column=_find_column(table.columns, GUIDANCE_COLUMNS),
        limit=limit,
    )


_INVPROMPT_NAME = re.compile(r"(?P<concept>.+?)_eta_(?P<eta>\d+(?:\.\d+)?)_K_(?P<K>\d+)$")


def load_ring_a_bell(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Load a Ring-A-Bell inverted-prompt CSV (``data/InvPrompt/<Concept>/<Concept>_eta_<eta>_K_<K>.csv``:
    ``prompt, case_number, evaluation_seed``). ``meta`` gets ``concept``, ``eta`` and ``K`` parsed from the
    file name when it follows that pattern (K is the prompt length in tokens, eta the concept strength)."""
    _check_limit(limit)
    path = Path(path)
    table = _read_table(path)
    what = "a Ring-A-Bell prompt file"
    extra: dict[str, Any] = {}
    m = _INVPROMPT_NAME.match(path.stem)
    if m:
        extra = {"concept": m["concept"], "eta": float(m["eta"]), "K": int(m["K"])}
    return _build(
        table,
        text_column=_require_column(table, "prompt", what),
        id_column=_find_column(table.columns, ID_COLUMNS),
        seed_column=_find_column(table.columns, SEED_COLUMNS),
        guidance_column=None,
        limit=limit,
        extra_meta=extra,
    )


def _none_cell(value: Any) -> bool:
    return _is_empty(value) or str(value).strip() == "None"


def load_concept_prompt_pairs(
    path: str | Path, negative_path: str | Path | None = None
) -> list[tuple[Prompt, Prompt]]:
    """Load Ring-A-Bell's prompt pairs for building a concept vector (``data/Prompts_For_ConceptVector``).

    Two layouts exist:

    * ``Violence_30.csv``: ``prompt`` (with the concept), ``prompt1`` (the same sentence without it),
      ``case_number``, ``evaluation_seed``: each row is a pair.
    * ``Nudity_prompt.csv``: the concept prompt in parts (``nudity, people, clothes, location``; ``None``
      marks an absent part), paired by ``case_number`` with ``negative_path`` (default: the sibling file
      ``No<name>``, i.e. ``NoNudity_prompt.csv``), whose ``prompt`` column holds the concept-free prompt.
      The positive text is ``"{nudity} {people}, {location}"`` (``"{nudity}, {location}"`` without people),
      as in Ring-A-Bell's ``Get_Concept_Vector`` notebook; ``clothes`` is kept in ``meta``.

    Returns ``(with_concept, without_concept)`` pairs in file order; a case number missing on either side is
    an error.
    """
    path = Path(path)
    table = _read_table(path)
    cols = table.columns
    if _find_column(cols, ["prompt1"]) and _find_column(cols, ["prompt"]):
        records = list(table.records)
        common: dict[str, Any] = {
            "id_column": _find_column(cols, ID_COLUMNS),
            "seed_column": _find_column(cols, SEED_COLUMNS),
            "guidance_column": None,
            "limit": None,
        }
        text_col, neg_col = _find_column(cols, ["prompt"]), _find_column(cols, ["prompt1"])
        with_concept = _build(
            _Table(table.source, cols, iter(records), table.header_line), text_column=text_col, **common
        )
        without = _build(
            _Table(table.source, cols, iter(records), table.header_line), text_column=neg_col, **common
        )
        drop = {text_col, neg_col}
        return [
            (
                Prompt(p.id, p.text, p.seed, meta={k: v for k, v in p.meta.items() if k not in drop}),
                Prompt(n.id, n.text, n.seed, meta={k: v for k, v in n.meta.items() if k not in drop}),
            )
            for p, n in zip(with_concept, without, strict=True)
        ]

    what = "a Ring-A-Bell concept-prompt file (expected prompt/prompt1 or nudity/people/location columns)"
    parts = [_require_column(table, c, what) for c in ("nudity", "people", "location")]
    id_column = _require_column(table, "case_number", what)
    composed: list[_Record] = []
    for rec in table.records:
        nudity, people, location = (rec.values[c] for c in parts)
        if _none_cell(nudity) or _none_cell(location):
            raise PromptFileError(path, rec.line, "empty 'nudity' or 'location' part")
        head = nudity.strip() if _none_cell(people) else f"{nudity.strip()} {people.strip()}"
        values = dict(rec.values)
        values["prompt"] = f"{head}, {location.strip()}"
        composed.append(_Record(rec.line, values))
    composed_table = _Table(table.source, [*cols, "prompt"], iter(composed), table.header_line)
    positives = _build(
        composed_table,
        text_column="prompt",
        id_column=id_column,
        seed_column=_find_column(cols, SEED_COLUMNS),
        guidance_column=None,
        limit=None,
    )
    negative_path = Path(negative_path) if negative_path is not None else path.with_name("No" + path.name)
    if not negative_path.exists():
        raise FileNotFoundError(
            f"Concept-free prompts for {path.name} not found at {negative_path}; pass negative_path="
        )
    negatives = {p.id: p for p in load_prompt_file(negative_path)}
    missing = [p.id for p in positives if p.id not in negatives]
    extra = sorted(set(negatives) - {p.id for p in positives})
    if missing or extra:
        raise PromptFileError(
            negative_path,
            None,
            f"does not pair with {path.name}: case numbers missing here {missing[:10]}, "
            f"case numbers only here {extra[:10]}",
        )
    return [(p, negatives[p.id]) for p in positives]


def load_concept_vector(path: str | Path, *, tokens: int = 77, dim: int | None = None) -> np.ndarray:
    """Load a Ring-A-Bell concept vector (``Concept Vectors/<Concept>_vector.npy``) as a float32 array of
    shape ``(tokens, dim)``: one offset per CLIP token position, added to a prompt's text embedding.

    Leading axes of size 1 are dropped (``VanGogh_vector.npy`` is stored as ``(1, 77, 768)``). ``dim``
    defaults to accepting 768 (SD 1.x CLIP ViT-L/14) or 1024 (SD 2.x OpenCLIP ViT-H). Pickled files are
    refused. Raises :class:`PromptFileError` on a wrong shape or non-finite values.
    """
    import numpy as np

    path = Path(path)
    _check_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise PromptFileError(
            path, None, f"not a plain .npy array (pickled objects are refused): {exc}"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise PromptFileError(path, None, "expected a single .npy array, got an archive")
    original = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    dims = (dim,) if dim is not None else (768, 1024)
    if arr.ndim != 2 or arr.shape[0] != tokens or arr.shape[1] not in dims:
        want = " or ".join(f"({tokens}, {d})" for d in dims)
        raise PromptFileError(path, None, f"concept vector has shape {original}, expected {want}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise PromptFileError(path, None, f"concept vector has dtype {arr.dtype}, expected floats")
    if not np.isfinite(arr).all():
        raise PromptFileError(path, None, "concept vector contains NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


__all__ = [
    "GUIDANCE_COLUMNS",
    "I2P_CATEGORIES",
    "I2P_HUB_ID",
    "ID_COLUMNS",
    "MMA_TEXT_COLUMNS",
    "SEED_COLUMNS",
    "TEXT_COLUMNS",
    "datasets_available",
    "load_coco_captions",
    "load_concept_prompt_pairs",
    "load_concept_vector",
    "load_i2p",
    "load_mma_diffusion",
    "load_prompt_file",
    "load_ring_a_bell",
    "load_unlearndiff",
    "network_allowed",
]
