"""The content-addressed store under ``--out``.

Layout (the store root is the ``--out`` directory, ``runs/`` by default)::

    runs/
      cells/<stage>/<key[:2]>/<key>.<ext>    one artifact per cell, shared by every run under this root
      <run-id>/                              one directory per resolved config
        config.yaml  provenance.json  records.parquet  leaderboard.csv  leaderboard.md

Cells live beside the runs (not inside one) so that a second run that adds a defense reuses the
undefended baseline's images and scores instead of regenerating them. Every write goes to a temporary
file in the same directory and is renamed into place, so a killed process never leaves a half-written
artifact that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from benchmark.api.errors import PathEscapeError
from benchmark.api.paths import check_name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


class CellStore:
    """Artifacts addressed by (stage, key) under ``root/cells``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.cells = self.root / "cells"

    def run_dir(self, name: str) -> Path:
        """The folder of run ``name``: one checked path component directly under the root, never outside it."""
        path = self.root / check_name(name, "run name")
        if path.resolve().parent != self.root:
            raise PathEscapeError(f"run name {name!r} leads outside {self.root}")
        return path

    def relpath(self, stage: str, key: str, ext: str) -> str:
        return f"cells/{stage}/{key[:2]}/{key}.{ext}"

    def path(self, stage: str, key: str, ext: str) -> Path:
        return self.root / self.relpath(stage, key, ext)

    def dir(self, stage: str, key: str) -> Path:
        return self.cells / stage / key[:2] / key

    def resolve(self, relpath: str) -> Path:
        """Turn a path stored in a record back into a file path, refusing anything outside the root."""
        candidate = (self.root / relpath).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise PathEscapeError(f"stored path {relpath!r} points outside the store root {self.root}")
        return candidate

    def exists(self, stage: str, key: str, ext: str) -> bool:
        return self.path(stage, key, ext).is_file()

    def read_json(self, stage: str, key: str) -> Any:
        return json.loads(self.path(stage, key, "json").read_text(encoding="utf-8"))

    def write_json(self, stage: str, key: str, obj: Any) -> str:
        atomic_write_json(self.path(stage, key, "json"), obj)
        return self.relpath(stage, key, "json")

    def write_png(self, stage: str, key: str, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(self.path(stage, key, "png"), buffer.getvalue())
        return self.relpath(stage, key, "png")
