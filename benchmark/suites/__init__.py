"""Named run configs: every ``*.yaml`` / ``*.toml`` file in this folder is a suite named after it."""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmark.registry import SUITES

SUITE_DIR = Path(__file__).parent


def _description(path: Path) -> str:
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    except Exception:  # a broken suite file is reported when it is used, not when listing
        return "(unreadable suite file)"


for _path in sorted(SUITE_DIR.glob("*.y*ml")) + sorted(SUITE_DIR.glob("*.toml")):
    SUITES.add(_path.stem, _path, _description(_path))
