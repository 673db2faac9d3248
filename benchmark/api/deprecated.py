"""Old import paths kept for one release: the shims call :func:`moved` so that a plugin written for the previous
layout still imports, and is told, once, the line to write instead."""

from __future__ import annotations

import warnings


class UnlearnArenaDeprecationWarning(FutureWarning):
    """An old import path or name. A FutureWarning, so Python shows it to the user who runs a plugin (a
    DeprecationWarning raised inside an imported module is hidden by default)."""


def moved(old: str, new_import: str) -> None:
    """Warn that module ``old`` moved; ``new_import`` is the line to write instead."""
    warnings.warn(f"'{old}' is deprecated and will be removed in the next release; write `{new_import}` instead "
                  "(README: 'Writing a plugin')", UnlearnArenaDeprecationWarning, stacklevel=3)
