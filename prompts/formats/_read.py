"""Reading a prompt file into a table of records (shared by every format module; private).

A :class:`Table` is the file's column names plus an iterator of :class:`Record` s, each with the 1-based
physical line on which it starts, so that every later error can name the file and the line. CSV / TSV are
read with the :mod:`csv` module (not pandas) so that line numbers stay exact even for quoted fields that
span several lines. Every way a file can be unreadable ends in a :class:`PromptFileError`, and a missing
file in a :class:`PromptFileNotFoundError`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.api.errors import DataFileError
from benchmark.api.prompt import PromptFileError

SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}


class PromptFileNotFoundError(DataFileError, FileNotFoundError):
    """A prompt file (or a prompt set's file) that is not where it was expected; the message says where it
    was looked for and how to get it. Both a :class:`~benchmark.api.errors.UserError` and a
    :class:`FileNotFoundError`."""


def show(name: str) -> str:
    """A column name or cell as it can appear in a one-line message (escaped if it holds a line break)."""
    return name if name.isprintable() else repr(name)[1:-1]


def names(columns: list[str] | tuple[str, ...], most: int = 20) -> str:
    """Column names for a one-line message: comma-separated, the first ``most`` of them."""
    shown = ", ".join(show(str(c)) for c in columns[:most])
    return shown + (f", ... ({len(columns) - most} more)" if len(columns) > most else "")


@dataclass
class Record:
    line: int | None  # 1-based physical line where the record starts; None for in-memory rows (hub)
    values: dict[str, Any]


@dataclass
class Table:
    source: str  # the file path, or a hub address, as shown in error messages
    columns: list[str]
    records: Iterator[Record]
    header_line: int | None = 1


def check_file(path: Path) -> None:
    if not path.exists():
        raise PromptFileNotFoundError(f"Prompt file not found: {path}")
    if not path.is_file():
        raise PromptFileError(path, None, "is not a file")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PromptFileError(path, None, f"cannot be read: {exc.strerror or exc}") from None


def decode(path: Path) -> str:
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptFileError(
            path, line, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def file_format(path: Path) -> str:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PromptFileError(
            path,
            None,
            f"unknown prompt file type '{path.suffix}'; use one of {', '.join(sorted(SUFFIX_FORMATS))}",
        )
    return fmt


def read_csv(path: Path, delimiter: str = ",") -> Table:
    text = decode(path)
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
        raise PromptFileError(path, header_line, f"duplicate column(s) {names(dupes)} in the header")

    def records() -> Iterator[Record]:
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
                    f"row has {len(row)} fields but the header has {len(columns)} ({names(columns)}); "
                    "quote fields that contain the delimiter",
                )
            yield Record(start, dict(zip(columns, row, strict=True)))

    return Table(str(path), columns, records(), header_line)


def read_txt(path: Path) -> Table:
    text = decode(path)

    def records() -> Iterator[Record]:
        for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
            if line.strip():
                yield Record(lineno, {"prompt": line.strip()})

    return Table(str(path), ["prompt"], records(), None)


def objects_table(source: str, items: list[tuple[int | None, Any]]) -> Table:
    """Turn a list of JSON values (all strings, or all objects) into a table."""
    if not items:
        return Table(source, [], iter(()), None)
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

    def records() -> Iterator[Record]:
        for line, value in items:
            if kind == "string":
                if not isinstance(value, str):
                    raise PromptFileError(
                        source,
                        line,
                        f"expected a prompt string like the first entry, got {type(value).__name__}",
                    )
                yield Record(line, {"prompt": value})
            else:
                if not isinstance(value, dict):
                    raise PromptFileError(
                        source, line, f"expected an object like the first entry, got {type(value).__name__}"
                    )
                yield Record(line, value)

    return Table(source, columns, records(), first_line)


def _json_value(path: Path, text: str, line: int | None) -> Any:
    """``json.loads`` with every failure as a :class:`PromptFileError` (syntax, integers over Python's
    digit limit, nesting deeper than the recursion limit)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = exc.lineno if line is None else line
        raise PromptFileError(path, where, f"not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise PromptFileError(path, line, "not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with more digits than int() accepts
        raise PromptFileError(path, line, f"not usable JSON: {exc}") from None


def read_json(path: Path) -> Table:
    text = decode(path)
    data = _json_value(path, text, None)
    if not isinstance(data, list):
        raise PromptFileError(
            path, 1, f"expected a JSON list of prompt strings or objects, got a {type(data).__name__}"
        )
    # Walk the (already validated) array once more to learn the line on which each element starts.
    decoder = json.JSONDecoder()
    items: list[tuple[int | None, Any]] = []
    pos, line, counted = text.index("[") + 1, 1, 0
    ws = re.compile(r"[ \t\n\r,]*")  # JSON's whitespace, and the separators between elements
    for _ in range(len(data)):
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        line += text.count("\n", counted, pos)
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        items.append((line, value))
    return objects_table(str(path), items)


def read_jsonl(path: Path) -> Table:
    text = decode(path)
    items: list[tuple[int | None, Any]] = []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        items.append((lineno, _json_value(path, line, lineno)))
    return objects_table(str(path), items)


def read_table(path: Path) -> Table:
    """The file's records, its format chosen by its suffix (see :data:`SUFFIX_FORMATS`)."""
    check_file(path)
    fmt = file_format(path)
    if fmt == "csv":
        return read_csv(path, ",")
    if fmt == "tsv":
        return read_csv(path, "\t")
    if fmt == "json":
        return read_json(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    return read_txt(path)
