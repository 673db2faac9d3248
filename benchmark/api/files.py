"""Options that name files: keyed by the file's content, never by its path.

Annotate an option with one of these types and it enters the component's cell keys as the SHA-256 of what it
names (its first 16 hex characters, as every cell key), so rewriting the file in place recomputes the cells
that depend on it, and the same file under two paths gives the same keys::

    @dataclass
    class Options:
        checkpoint: FilePath | None = None  # an official-format state dict (.safetensors/.pt)

- :class:`FilePath`: an existing file, keyed by its content.
- :class:`LocalPath`: an existing file or folder (a model folder), a folder keyed by its files' contents
  (their paths relative to it and their hashes; hidden entries such as ``.cache`` left out).
- :class:`PathOrHubId`: a local file or folder (keyed by content) or, when nothing exists at that path, a
  hub id or tag (keyed as written, with whatever pins it, e.g. a revision option).

An unset option (None) is keyed exactly as before (None). Hashes are cached per process by (resolved path,
size, mtime_ns) in :func:`benchmark.hashing.file_sha256`, so a large file is read once. A value is a ``str``
(its subclass), so code that reads the option as a path keeps working. A missing file fails when the
component is checked (:meth:`benchmark.api.component.Component.check_files`), in one line that names the
option and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from benchmark.hashing import file_hash, file_sha256, stable_hash


class FilePath(str):
    """An option naming a file; its cell-key contribution is the file's content hash."""

    what: ClassVar[str] = "file"  # in messages and in ``benchmark list --options``
    must_exist: ClassVar[bool] = True

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls, core_schema.no_info_before_validator_function(
                lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v,
                core_schema.str_schema(min_length=1)))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        json_schema = dict(handler(schema))
        json_schema["format"] = cls.what.replace(" ", "-")
        json_schema.pop("minLength", None)  # "file" says it: no "at least 1 characters" in option listings
        return json_schema

    def exists(self, path: Path) -> bool:
        return path.is_file()


class LocalPath(FilePath):
    """An option naming a file or a folder (a model folder): keyed by the content of what it names."""

    what = "file or folder"

    def exists(self, path: Path) -> bool:
        return path.exists()


class PathOrHubId(FilePath):
    """A local file or folder (keyed by content) or a hub id / tag (keyed as written)."""

    what = "local path or hub id"
    must_exist = False

    def exists(self, path: Path) -> bool:
        return path.exists()


def content_hash(path: str | os.PathLike[str]) -> str:
    """16 hex characters of SHA-256 over a file's bytes, or over a folder's files (relative names and hashes)."""
    path = Path(path)
    if path.is_dir():
        return stable_hash(folder_manifest(path))
    return file_hash(path)


def folder_manifest(folder: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file under ``folder``, sorted; hidden entries are left out."""
    entries = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                full = Path(root) / name
                entries.append((full.relative_to(folder).as_posix(), file_sha256(full)))
    return sorted(entries)


def full_sha256(path: str | os.PathLike[str]) -> str:
    """The full 64-hex SHA-256 of a file, or of a folder's manifest (for provenance)."""
    path = Path(path)
    if path.is_dir():
        return stable_hash(folder_manifest(path), 64)
    return file_sha256(path)


def missing_message(kind: str, name: str, option: str, value: str, path: Path, what: str) -> str:
    """One line: which option of which component names a missing file, and what to do."""
    where = "" if str(path) == str(value) else f" ({path})"
    return (f"{kind} '{name}': option {option}={str(value)!r}: no such {what}{where}; pass an existing {what} "
            f"(--option {kind}:{name}.{option}=PATH) or leave the option unset")


def load_weights(path: str | os.PathLike[str], owner: str, hint: str = "") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file, or of a plain state dict pickled with ``torch.save`` (opened
    only with ``torch.load(weights_only=True)``). A file that is not readable as such (truncated, corrupt,
    not a weight file, a pickle that would run code) raises a :class:`~benchmark.api.errors.DataFileError`:
    one line naming the file (``owner``: who asked, e.g. ``defense 'saferedir': option checkpoint``) and
    what to do (``hint``)."""
    from benchmark.api.errors import DataFileError

    path = Path(path)
    hint = hint or "pass an intact weight file (download or export it again)"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except MemoryError:
            raise  # a large intact file on a small machine: not the file's fault, keep torch's own error
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...: the file, not our code
            raise DataFileError(f"{owner}: {path} is not a readable .safetensors file "
                                f"({type(error).__name__}: {_first_line(error)}); {hint}") from None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise  # as above: out of memory is no corrupt file
    except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise DataFileError(f"{owner}: {path} cannot be loaded with torch.load(weights_only=True) "
                            f"({type(error).__name__}): not a plain state dict of tensors "
                            f"(or corrupt), and pickles that would run code are refused; {hint}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


def check_weights_header(path: str | os.PathLike[str], owner: str, hint: str = "") -> None:
    """A cheap check before any work: a ``.safetensors`` file's header parses (only the header is read), else
    the :class:`~benchmark.api.errors.DataFileError` of :func:`load_weights`. Other formats are checked when
    loaded."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception:  # noqa: BLE001 - the file, not our code: load_weights words the error
        load_weights(path, owner, hint)
