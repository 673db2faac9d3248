"""Named prompt sets: where each file comes from, where it is expected, and how it is loaded.

Third-party prompt files are not shipped; a user downloads them once into a data directory that mirrors
their origin (``<data_dir>/Diffusion-MU-Attack/nudity.csv``, ``<data_dir>/MMA-Diffusion/...``,
``<data_dir>/Ring-A-Bell/...``). The data directory is, in order: the ``data_dir`` argument (the CLI's
``--data-dir``), the environment variable ``UNLEARN_ARENA_DATA``, else ``./data``. Small sets written for this
project ship inside the package (``prompts/data/*.txt``) and need no data directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompts.base import Prompt
from prompts.loaders import datasets_available, network_allowed

DATA_ENV = "UNLEARN_ARENA_DATA"
DEFAULT_DATA_DIR = Path("data")
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"


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
class PromptSetSpec:
    """A named prompt set: a file in the data directory (or shipped in the package) plus its loader."""

    name: str
    description: str
    source: str  # where users get the file (URL), with the file's path there in ``source_path``
    filename: str  # relative to the data directory (or to prompts/data for packaged sets)
    loader: Callable[..., list[Prompt]] = field(repr=False, compare=False)
    loader_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source_path: str = ""
    packaged: bool = False  # shipped in prompts/data: loads without a data directory
    benign: bool = False  # a utility (benign) set rather than an attack set
    hub_dataset: str | None = None  # a hub dataset the loader may use when the file is missing

    def path(self, data_dir: str | Path | None = None) -> Path:
        """Where the set's file is expected."""
        if self.packaged:
            return PACKAGE_DATA_DIR / self.filename
        return resolve_data_dir(data_dir)[0] / self.filename

    def available(self, data_dir: str | Path | None = None) -> bool:
        return self.path(data_dir).is_file()

    def missing_message(self, data_dir: str | Path | None = None) -> str:
        root, origin = resolve_data_dir(data_dir)
        where = f"{self.source} ({self.source_path})" if self.source_path else self.source
        msg = (
            f"Prompt set '{self.name}' needs the file {self.filename}, which is not at "
            f"{(root / self.filename).resolve()} (data directory {root.resolve()}, from {origin}). "
            f"Download it from {where} and save it as <data_dir>/{self.filename}; then point the benchmark "
            f"at that data directory with --data-dir DIR or the environment variable {DATA_ENV}=DIR."
        )
        if self.hub_dataset:
            msg += (
                f" Alternatively install the 'datasets' package and allow network access "
                f"(UNLEARN_ARENA_ALLOW_NETWORK=1) to read the hub dataset {self.hub_dataset}."
            )
        return msg

    def load(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Prompt]:
        """Load the set's prompts (the first ``limit`` if given)."""
        path = self.path(data_dir)
        if not path.is_file():
            if self.hub_dataset and network_allowed() and datasets_available():
                return self.loader(None, limit=limit, allow_network=True, **self.loader_kwargs)
            raise FileNotFoundError(self.missing_message(data_dir))
        return self.loader(path, limit=limit, **self.loader_kwargs)
