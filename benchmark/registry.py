"""Deprecated: the registries' import path before ``benchmark.api``. Kept for one release; import from
``benchmark.api`` instead."""

from benchmark.api.deprecated import moved

moved("benchmark.registry", "from benchmark.api import DEFENSES, ATTACKS, JUDGES, ...")

from benchmark.api.errors import UnknownEntryError  # noqa: E402
from benchmark.api.registry import (  # noqa: E402
    ATTACKS,
    DEFENSES,
    JUDGES,
    MODELS,
    PROMPT_SETS,
    SUITES,
    TASKS,
    Registry,
    load_plugin,
)

__all__ = ["ATTACKS", "DEFENSES", "JUDGES", "MODELS", "PROMPT_SETS", "SUITES", "TASKS", "Registry",
           "UnknownEntryError", "load_plugin"]
