"""Prompt-set specs: what a named prompt set is, where its file comes from, and which file it was written for.

A prompt set is a data file, ``prompts/sets/<name>.yaml`` (or a third party's file of the same shape)::

    description: UnlearnDiff church object prompts (50), with evaluation seeds and guidance   # one line
    source: https://github.com/OPTML-Group/Diffusion-MU-Attack    # where users get the file
    source_path: prompts/church.csv                                # the file's path there (optional)
    filename: Diffusion-MU-Attack/church.csv                       # where it goes in the data directory
    format: unlearndiff                                            # a loader of prompts.formats.FORMATS
    options: {}                                                    # keyword arguments of that loader
    sha256: 4987e2...                                              # the file the spec was written for
    packaged: false    # true: the file ships in prompts/data and needs no data directory
    benign: false      # true: a utility (benign) set rather than an attack set
    hub_dataset: null  # a hub dataset the loader may read when the file is missing

Third-party prompt files are not shipped; a user downloads them once into a data directory that mirrors
their origin (``<data_dir>/Diffusion-MU-Attack/nudity.csv``, ``<data_dir>/MMA-Diffusion/...``,
``<data_dir>/Ring-A-Bell/...``). The data directory is, in order: the ``data_dir`` argument (the CLI's
``--data-dir``), the environment variable ``UNLEARN_ARENA_DATA``, else ``./data``.

``sha256`` pins the exact file the set was written for. A file with another hash still loads (a fixed typo
upstream should not stop a run) but is reported with a warning, and :meth:`PromptSetSpec.check_file` gives
the comparison for a run's provenance: results on a different file are not comparable with published ones.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.prompt import Prompt
from benchmark.api.registry import read_data_file
from benchmark.hashing import file_sha256  # cached per (path, size, mtime); re-exported in __all__
from prompts.formats import FORMATS, GENERATED_FORMATS, format_loader
from prompts.formats._hub import datasets_available, network_allowed
from prompts.formats._read import PromptFileNotFoundError

log = logging.getLogger(__name__)

DATA_ENV = "UNLEARN_ARENA_DATA"
DEFAULT_DATA_DIR = Path("data")
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"

REQUIRED_KEYS = ("description", "source", "format")
OPTIONAL_KEYS = ("source_path", "filename", "options", "packaged", "benign", "hub_dataset", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """The data directory and how it was chosen: the explicit argument, else ``$UNLEARN_ARENA_DATA``,
    else ``./data`` (relative to the current directory)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument / --data-dir"
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return DEFAULT_DATA_DIR, "the default ./data"


@dataclass(frozen=True)
class FileCheck:
    """How a prompt set's file compares with the one its spec was written for.

    ``path`` is where the file was looked for (None for generated sets), ``sha256`` the file's actual hash
    (None when there is no file), ``expected`` the spec's hash (None when the spec pins none), ``matches``
    True / False when both are known, else None.
    """

    path: str | None
    sha256: str | None
    expected: str | None
    matches: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "expected": self.expected, "matches": self.matches}


_warned: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class PromptSetSpec:
    """A named prompt set: a file in the data directory (or shipped in the package), the format that reads
    it, and the sha256 of the file the spec was written for. Generated sets (format ``sd-mini``) have no
    file."""

    name: str
    description: str
    source: str  # where users get the file (URL), with the file's path there in ``source_path``
    format: str  # a key of prompts.formats.FORMATS
    filename: str | None = None  # relative to the data directory (or to prompts/data for packaged sets)
    options: dict[str, Any] = field(default_factory=dict, hash=False)  # keyword arguments of the loader
    source_path: str = ""
    packaged: bool = False  # shipped in prompts/data: loads without a data directory
    benign: bool = False  # a utility (benign) set rather than an attack set
    hub_dataset: str | None = None  # a hub dataset the loader may use when the file is missing
    sha256: str | None = None  # the file this spec was written for

    # -- the file ---------------------------------------------------------------------------------
    def path(self, data_dir: str | Path | None = None) -> Path | None:
        """Where the set's file is expected (None for a generated set)."""
        if self.filename is None:
            return None
        if self.packaged:
            return PACKAGE_DATA_DIR / self.filename
        return resolve_data_dir(data_dir)[0] / self.filename

    def available(self, data_dir: str | Path | None = None) -> bool:
        path = self.path(data_dir)
        return path is None or path.is_file()

    def missing_message(self, data_dir: str | Path | None = None) -> str:
        root, origin = resolve_data_dir(data_dir)
        where = f"{self.source} ({self.source_path})" if self.source_path else self.source
        msg = (
            f"Prompt set '{self.name}' needs the file {self.filename}, which is not at "
            f"{(root / str(self.filename)).resolve()} (data directory {root.resolve()}, from {origin}). "
            f"Download it from {where} and save it as <data_dir>/{self.filename}; then point the benchmark "
            f"at that data directory with --data-dir DIR or the environment variable {DATA_ENV}=DIR."
        )
        if self.hub_dataset:
            msg += (
                f" Alternatively install the 'datasets' package and allow network access "
                f"(UNLEARN_ARENA_ALLOW_NETWORK=1) to read the hub dataset {self.hub_dataset}."
            )
        return msg

    def check_file(self, data_dir: str | Path | None = None) -> FileCheck:
        """The set's file against the sha256 its spec was written for (what a run records in provenance)."""
        path = self.path(data_dir)
        actual = file_sha256(path) if path is not None and path.is_file() else None
        matches = None if actual is None or self.sha256 is None else actual == self.sha256
        return FileCheck(str(path) if path is not None else None, actual, self.sha256, matches)

    def _warn_if_different(self, data_dir: str | Path | None) -> FileCheck:
        check = self.check_file(data_dir)
        if check.matches is False:
            key = (self.name, str(check.path), str(check.sha256))
            if key not in _warned:  # once per process and file version, however often the set is loaded
                _warned.add(key)
                log.warning(
                    "prompt set %s: file %s has sha256 %s, the spec was written for %s; its prompts and ids "
                    "may differ from the published set",
                    self.name, check.path, check.sha256, check.expected,
                )
        return check

    # -- loading ----------------------------------------------------------------------------------
    def load(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Prompt]:
        """Load the set's prompts (the first ``limit`` if given). A file whose sha256 differs from the spec's
        is loaded and reported with a warning."""
        loader = format_loader(self.format)
        path = self.path(data_dir)
        if path is None:
            return loader(None, limit=limit, **self.options)
        if not path.is_file():
            if self.hub_dataset and network_allowed() and datasets_available():
                return loader(None, limit=limit, allow_network=True, **self.options)
            raise PromptFileNotFoundError(self.missing_message(data_dir))
        self._warn_if_different(data_dir)
        return loader(path, limit=limit, **self.options)

    def to_dict(self) -> dict[str, Any]:
        """The spec as the keys of its data file (everything but the name, which is the file's stem)."""
        return {
            "description": self.description,
            "source": self.source,
            "source_path": self.source_path,
            "filename": self.filename,
            "format": self.format,
            "options": dict(self.options),
            "packaged": self.packaged,
            "benign": self.benign,
            "hub_dataset": self.hub_dataset,
            "sha256": self.sha256,
        }


# ------------------------------------------------------------------------------------------- the data file
def load_prompt_set_file(path: str | Path) -> PromptSetSpec:
    """The :class:`PromptSetSpec` a prompt-set file describes (its name is the file's stem); a
    :class:`ConfigError` naming the file and what is allowed for a bad key or value."""
    path = Path(path)
    data = read_data_file(path)
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a prompt-set file takes "
                          f"{sorted(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if data.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")

    def text(key: str, default: str | None = None) -> str | None:
        value = data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{path}: '{key}' must be a string, got {value!r}")
        return value.strip()

    def flag(key: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: '{key}' must be true or false, got {value!r}")
        return value

    fmt = text("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: unknown format {fmt!r}; the formats are {', '.join(sorted(FORMATS))}")
    description = text("description") or ""
    if "\n" in description:
        raise ConfigError(f"{path}: 'description' must be one line (it is what `benchmark list` shows)")
    filename = text("filename")
    if fmt in GENERATED_FORMATS:
        if filename is not None or data.get("sha256") is not None or flag("packaged"):
            raise ConfigError(f"{path}: format {fmt!r} generates its prompts; it takes no filename, sha256 "
                              "or packaged")
    elif not filename:
        raise ConfigError(f"{path}: missing key ['filename'] (the file's path inside the data directory)")
    elif PurePosixPath(filename).is_absolute() or ".." in PurePosixPath(filename).parts or "\\" in filename:
        raise ConfigError(f"{path}: 'filename' must be a relative path inside the data directory "
                          f"(with '/' and no '..'), got {filename!r}")
    sha256 = text("sha256")
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA256.fullmatch(sha256):
            raise ConfigError(f"{path}: 'sha256' must be 64 hex digits (or null), got {data['sha256']!r}")
    options = data.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{path}: 'options' must be a mapping of the loader's keyword arguments")
    _check_options(path, fmt, options)
    return PromptSetSpec(
        name=path.stem,
        description=description,
        source=text("source") or "",
        source_path=text("source_path", "") or "",
        filename=filename,
        format=fmt,
        options=dict(options),
        packaged=flag("packaged"),
        benign=flag("benign"),
        hub_dataset=text("hub_dataset"),
        sha256=sha256,
    )


def _check_options(path: Path, fmt: str, options: dict[str, Any]) -> None:
    """Option names against the format loader's keyword arguments (not the file, the limit or the network)."""
    params = inspect.signature(format_loader(fmt)).parameters
    reserved = {"path", "limit", "allow_network"}
    allowed = [n for n, p in list(params.items())[1:] if n not in reserved
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown} for format {fmt!r}; it takes "
                          f"{allowed or 'no options'}")
    required = [n for n in allowed if params[n].default is inspect.Parameter.empty and n not in options]
    if required:
        raise ConfigError(f"{path}: format {fmt!r} needs option(s) {required}")


__all__ = [
    "DATA_ENV",
    "FileCheck",
    "PromptSetSpec",
    "file_sha256",
    "load_prompt_set_file",
    "resolve_data_dir",
]
