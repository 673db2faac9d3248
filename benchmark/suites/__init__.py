"""Named run configs: every ``*.yaml`` / ``*.toml`` file in this folder is a suite named after it (its
``description`` key is what ``benchmark list suites`` shows); a file whose name starts with ``_`` is no suite,
only something suites include.

A suite may start from others with ``include:``: a suite name (``include: default``), a path relative to the
including file (``include: _paper-ringabell-nudity.yaml``), or a list of them (later ones win). The including
file's keys win; mappings merge key by key at every depth (so a file may change one option, or one entry of
``source``), lists and values are replaced. :func:`read_suite` resolves them; the harness
(``load_suite_file``) and ``reports.published.suite_source`` both read suites through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.registry import SUITES, read_data_file

SUITE_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins key by key; mappings on both sides merge recursively, anything else (lists included)
    is replaced. Keys keep the base's order and new ones follow, so an included file fixes the layout."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _include_path(including: Path, target: Any) -> Path:
    """What an ``include:`` names: a path relative to the including file (it has a suffix or a folder), else a
    registered suite's name."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{including}: include must be a suite name or a relative path, got {target!r}")
    if target.endswith(SUITE_SUFFIXES) or "/" in target:
        path = including.parent / target
        if not path.is_file():
            raise ConfigError(f"{including}: included file {path} does not exist; fix the path (relative to "
                              f"{including.parent})")
        return path
    if target not in SUITES:
        raise ConfigError(f"{including}: included suite {target!r} does not exist; name one of "
                          f"`python -m benchmark list suites` or give a relative path ending in .yaml")
    return Path(SUITES.get(target))


def read_suite(path: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A suite file's mapping with its ``include:`` resolved: the included suites first, this file's keys on
    top (:func:`deep_merge`). ``description`` and ``source`` are kept. ``chain``: the files including this one
    (a file met twice on the way is a cycle)."""
    path = Path(path)
    if path.suffix not in SUITE_SUFFIXES:
        raise ConfigError(f"{path}: a suite file must be .yaml, .yml, .toml or .json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such suite file")
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain, resolved))
        raise ConfigError(f"{path}: include cycle {cycle}; remove one of these includes")
    data = read_data_file(path)
    includes = data.pop("include", None)
    merged: dict[str, Any] = {}
    for target in includes if isinstance(includes, list) else ([includes] if includes is not None else []):
        merged = deep_merge(merged, read_suite(_include_path(path, target), (*chain, resolved)))
    return deep_merge(merged, data)
