"""One generic registry for every pluggable kind: defenses, attacks, judges, tasks, prompt sets,
models and suites.

Entries arrive three ways, in the manner of lm-evaluation-harness:

* ``@REGISTRY.register("name")`` on a class or factory in a built-in module;
* ``REGISTRY.register_lazy("name", "module:attr", "one-line description")`` so that listing an entry
  does not import its (possibly heavy) module;
* the entry-point group ``unlearn_arena.<kind>`` of any installed distribution, and
  ``--plugin path/to/file.py`` which imports a user's file (whose decorators register it).

Unknown names fail with a ``did you mean`` suggestion.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownEntryError(KeyError):
    """Raised for a name that no registry entry carries; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


@dataclass
class Entry(Generic[T]):
    name: str
    description: str
    target: str | None = None  # "module:attr" for lazy entries
    obj: T | None = None
    source: str = "builtin"  # builtin | entry-point | plugin

    def load(self) -> T:
        if self.obj is None:
            assert self.target is not None
            module_name, _, attr = self.target.partition(":")
            module = importlib.import_module(module_name)
            self.obj = getattr(module, attr)
        return self.obj


def first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass
class Registry(Generic[T]):
    """A name -> entry mapping for one kind of component.

    ``builtin_modules`` are imported on first access so that their decorators run; keep them light or
    register their entries lazily.
    """

    kind: str
    builtin_modules: list[str] = field(default_factory=list)
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    _loaded_builtins: bool = False
    _loaded_entry_points: bool = False

    @property
    def entry_point_group(self) -> str:
        return f"unlearn_arena.{self.kind}"

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str | None = None, source: str = "builtin") -> None:
        desc = description or first_line(getattr(obj, "description", None)) or first_line(obj.__doc__)
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not None and existing.obj is not obj:
            if existing.source == "builtin" and source == "builtin":
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            log.warning("%s '%s' from %s replaces the %s entry", self.kind, name, source, existing.source)
        if isinstance(obj, type) and not getattr(obj, "name", None):
            obj.name = name  # type: ignore[attr-defined]
        self._entries[name] = Entry(name=name, description=desc, obj=obj, source=source)

    def register_lazy(self, name: str, target: str, description: str) -> None:
        if name not in self._entries:
            self._entries[name] = Entry(name=name, description=description, target=target)

    # -- discovery ----------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._loaded_builtins:
            self._loaded_builtins = True
            for module in self.builtin_modules:
                importlib.import_module(module)
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                if ep.name not in self._entries:
                    self._entries[ep.name] = Entry(
                        name=ep.name, description=f"from {ep.value}", target=ep.value, source="entry-point"
                    )

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self._ensure_loaded()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def get(self, name: str) -> T:
        self._ensure_loaded()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownEntryError(self.unknown_message(name))
        return entry.load()

    def entry(self, name: str) -> Entry[T]:
        self._ensure_loaded()
        if name not in self._entries:
            raise UnknownEntryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"Unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'.{hint} "
            f"Run `python -m benchmark list {self.kind}` to see all {len(self._entries)} entries."
        )


def load_plugin(path: str | Path) -> None:
    """Import a user's Python file so that its ``@REGISTRY.register`` decorators run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Plugin file not found: {path}")
    if path.suffix != ".py":
        raise ValueError(f"A plugin must be a .py file, got {path}")
    module_name = f"unlearn_arena_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    before = {r.kind: set(r._entries) for r in ALL_REGISTRIES}
    spec.loader.exec_module(module)
    added = {r.kind: set(r._entries) - before[r.kind] for r in ALL_REGISTRIES}
    for registry in ALL_REGISTRIES:
        for name in added[registry.kind]:
            registry._entries[name].source = f"plugin {path.name}"
    if not any(added.values()):
        log.warning("Plugin %s registered no entries", path)


DEFENSES: Registry[Any] = Registry("defenses", ["defenses"])
ATTACKS: Registry[Any] = Registry("attacks", ["attacks"])
JUDGES: Registry[Any] = Registry("judges", ["benchmark.judges"])
TASKS: Registry[Any] = Registry("tasks", ["benchmark.tasks"])
PROMPT_SETS: Registry[Any] = Registry("prompt-sets", ["prompts"])
MODELS: Registry[Any] = Registry("models", ["benchmark.models"])
SUITES: Registry[Any] = Registry("suites", ["benchmark.suites"])

ALL_REGISTRIES: list[Registry[Any]] = [DEFENSES, ATTACKS, JUDGES, TASKS, PROMPT_SETS, MODELS, SUITES]
REGISTRIES_BY_KIND: dict[str, Registry[Any]] = {r.kind: r for r in ALL_REGISTRIES}
