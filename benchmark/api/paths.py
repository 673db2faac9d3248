"""User-supplied names that become parts of paths, and paths that must stay inside their root.

Nothing a user types (``--name``, task / component names, prompt ids in file names) may lead a write out
of ``--out``: names are checked against one pattern, and paths read back from records are resolved and
refused when they leave their root.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.api.errors import PathEscapeError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(name: str, what: str) -> str:
    """``name`` if it is one path component of letters, digits, ``._+-`` (not starting with a dot), else a
    :class:`PathEscapeError` that says what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.endswith("."):
        raise PathEscapeError(
            f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_', '+' or '-', starting with a "
            f"letter or digit (it becomes a file or folder name, and must not contain '/', '..' or spaces)")
    return name


def safe_file_part(text: str, limit: int = 60) -> str:
    """A readable, safe file-name fragment of arbitrary text (prompt ids, cell labels)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._") or "x"
    return cleaned[:limit]


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, if it lies in ``root`` (or is it); else a :class:`PathEscapeError`."""
    root_resolved = root.resolve()
    candidate = (root_resolved / path).resolve() if not path.is_absolute() else path.resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise PathEscapeError(f"{path} points outside {root_resolved}")
    return candidate
