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

Several processes may share one store (torchrun ranks, SLURM array tasks, two commands started at once):
a process computes a cell only while it holds the cell's claim (:class:`CellClaims`), an OS file lock
(``flock``) next to the artifact. The kernel drops the lock when its process dies, so a killed worker's
claim is gone at once and the next process redoes the cell; nothing has to time out.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from PIL import Image

from benchmark.api.errors import PathEscapeError
from benchmark.api.paths import check_name

log = logging.getLogger(__name__)


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
        return self.read_json_path(self.path(stage, key, "json"))

    @staticmethod
    def read_json_path(path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))

    def write_json(self, stage: str, key: str, obj: Any) -> str:
        atomic_write_json(self.path(stage, key, "json"), obj)
        return self.relpath(stage, key, "json")

    def write_png(self, stage: str, key: str, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(self.path(stage, key, "png"), buffer.getvalue())
        return self.relpath(stage, key, "png")


@dataclass
class CellClaims:
    """Claims on one stage's cells, so that processes sharing a store never compute a cell twice.

    ``done(key)`` says whether a cell's artifact exists. :meth:`rounds` hands out the missing cells this
    process could claim, in rounds; cells another process holds are waited for (blocking on its lock) and
    then read, or claimed and computed if their holder died before finishing. The lock file is removed
    once its cell is written (a process still waiting on the old file then finds the cell done), so a
    finished store holds no lock files.
    """

    store: CellStore
    stage: str
    done: Callable[[str], bool]
    waiting: str | None = None  # logged when this process waits on another's claim (long waits only)
    held: dict[str, FileLock] = field(default_factory=dict)

    def lock_path(self, key: str) -> Path:
        return self.store.path(self.stage, key, "lock")

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` now if nobody holds it; False if another process does (or the cell is done)."""
        path = self.lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        if self.done(key):  # finished by another process between our check and our claim
            path.unlink(missing_ok=True)
            lock.release()
            return False
        self.held[key] = lock
        return True

    def wait(self, key: str) -> None:
        """Block until whoever holds ``key`` lets go (it finished, or it died and the kernel dropped its lock)."""
        path = self.lock_path(key)
        if not path.exists():
            return
        if self.waiting:
            log.info("%s; waiting for it", self.waiting)
        with FileLock(path, thread_local=False):
            if self.done(key):
                path.unlink(missing_ok=True)

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is None:
            return
        if self.done(key):
            self.lock_path(key).unlink(missing_ok=True)  # while still held: a waiter then finds the cell done
        lock.release()

    def rounds(self, keys: Iterable[str]) -> Iterator[list[str]]:
        """Yield lists of claimed, missing keys until every key is done, by this process or another.

        The caller computes and writes each yielded key's cell; the claims are released when the caller
        asks for the next round (or stops iterating), whether or not it wrote them."""
        pending = [k for k in dict.fromkeys(keys) if not self.done(k)]
        while pending:
            mine = [k for k in pending if self.try_claim(k)]
            busy = [k for k in pending if k not in self.held and not self.done(k)]
            if mine:
                try:
                    yield mine
                finally:
                    for key in mine:
                        self.release(key)
            elif busy:
                self.wait(busy[0])
            pending = [k for k in busy if not self.done(k)]
