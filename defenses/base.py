"""Deprecated: the defense interface's import path before ``benchmark.api``. Kept for one release; import from
``benchmark.api`` instead."""

from benchmark.api.deprecated import moved

moved("defenses.base", "from benchmark.api import Defense, DefenseKind, DefendedPipeline, PrepareContext")

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind, PrepareContext  # noqa: E402

__all__ = ["DefendedPipeline", "Defense", "DefenseKind", "PrepareContext"]
