"""Content hashes for cell keys.

A key is the SHA-256 of a canonical JSON encoding (sorted keys, no whitespace, floats via repr) of a
stage's resolved config plus its inputs' keys. Never a timestamp, rank, path or object id, so the same
config gives the same keys on any machine and in any process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from enum import Enum
from pathlib import PurePath
from typing import Any


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_canonical(v) for v in obj)
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return repr(obj)
        if obj.is_integer():
            return int(obj)  # 7.0 and 7 are the same guidance scale
        return float(repr(obj))
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, PurePath):
        raise TypeError("paths must not enter cell keys: hash the file's content instead")
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot hash object of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (first ``length`` hex characters)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | PurePath, chunk: int = 1 << 20) -> str:
    """The full SHA-256 hex digest of a file's content, computed once per process for each (resolved path,
    size, mtime_ns): a large weight file named by several components or cells is read once. A file rewritten
    in place gets another mtime (and usually size), so its new content is hashed again."""
    resolved = os.path.realpath(os.fspath(path))
    stat = os.stat(resolved)
    return _sha256_cached(resolved, stat.st_size, stat.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=4096)
def _sha256_cached(path: str, size: int, mtime_ns: int, chunk: int) -> str:  # size and mtime key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | PurePath, length: int = 16, chunk: int = 1 << 20) -> str:
    """The first ``length`` hex characters of :func:`file_sha256` (cell keys use 16)."""
    return file_sha256(path, chunk)[:length]
