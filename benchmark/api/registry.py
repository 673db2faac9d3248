"""One registry for every pluggable kind, lazy, in the manner of lm-evaluation-harness.

There is one way to add a built-in: put it in its folder.

* **Code** (defenses, attacks, judges, models): a module in the kind's package (``defenses/``, ``attacks/``,
  ``benchmark/judges/``, ``benchmark/models/``) whose class carries ``@DEFENSES.register("name")``. The
  folder is read with :mod:`ast`, not imported, so ``benchmark list`` imports neither torch nor the module;
  the module is imported when its entry is first used. The description is the ``description`` of the
  class, else the first line of its docstring.
* **Data** (tasks, prompt sets, suites): a YAML (or TOML) file in the kind's data folder
  (``benchmark/tasks/``, ``prompts/sets/``, ``benchmark/suites/``), named after the entry, with a
  ``description`` key; it is parsed into its object when first used.

Third parties add entries through the entry-point group ``unlearn_arena.<kind>`` of an installed
distribution, or with ``--plugin path/to/file.py`` (a file whose decorators register its entries).
Unknown names fail with ``did you mean``.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from benchmark.api.errors import ConfigError, UnknownEntryError, UserError
from benchmark.api.paths import check_name

log = logging.getLogger(__name__)

T = TypeVar("T")
DATA_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass
class Entry(Generic[T]):
    name: str
    description: str
    target: str | None = None  # "module:attr" of a code entry not yet imported
    path: Path | None = None  # the file of a data entry
    obj: T | None = None
    source: str = "builtin"  # builtin | entry-point | plugin <file>
    loader: Callable[[Path], Any] | None = field(default=None, repr=False)

    def load(self) -> T:
        if self.obj is None:
            if self.path is not None:
                assert self.loader is not None
                self.obj = self.loader(self.path)
            else:
                assert self.target is not None
                module_name, _, attr = self.target.partition(":")
                self.obj = getattr(importlib.import_module(module_name), attr)
        return self.obj


def first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass
class Registry(Generic[T]):
    """A name -> entry mapping for one kind of component.

    ``package`` is where built-in code entries live (read statically); ``data_package`` and
    ``data_loader`` ("module:function", given the file's path) are for kinds whose built-ins are data files.
    ``variable`` is the name the registry has in :mod:`benchmark.api` (what decorators are spelt with).
    """

    kind: str
    variable: str
    package: str | None = None
    data_package: str | None = None
    data_loader: str | None = None
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    _scanned: bool = False
    _folder_names: set[str] = field(default_factory=set)

    @property
    def entry_point_group(self) -> str:
        return f"unlearn_arena.{self.kind}"

    @property
    def singular(self) -> str:
        return {"prompt-sets": "prompt set"}.get(self.kind, self.kind[:-1] if self.kind.endswith("s") else self.kind)

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@DEFENSES.register("my-defense")`` on the class."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str | None = None, source: str = "builtin") -> None:
        check_entry_name(name, self.kind)
        desc = description or first_line(getattr(obj, "description", None)) or first_line(obj.__doc__)
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not None and existing.obj is not obj:
            if existing.source == "builtin" and source == "builtin":
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            log.warning("%s '%s' from %s replaces the %s entry", self.kind, name, source, existing.source)
        # A class takes its registered name unless it declares its own; a subclass of a registered class
        # (switch-aware of unlearndiff) must not inherit its parent's name, or its cells and logs would say so.
        if isinstance(obj, type) and not obj.__dict__.get("name"):
            obj.name = name  # type: ignore[attr-defined]
        keep_source = existing.source if existing is not None and existing.obj is None else source
        self._entries[name] = Entry(name=name, description=desc, obj=obj, source=keep_source)

    # -- discovery ----------------------------------------------------------------------------
    def _ensure_scanned(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        found = []
        if self.package:
            found += scan_code_package(self.package, self.variable)
        if self.data_package:
            found += scan_data_package(self.data_package, self.data_loader or "")
        for entry in found:
            self._entries.setdefault(entry.name, entry)
            self._folder_names.add(entry.name)
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            self._entries.setdefault(ep.name, Entry(name=ep.name, description=f"from {ep.value}", target=ep.value,
                                                    source="entry-point"))

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_scanned()
        return sorted(self._entries)

    def builtin_names(self) -> list[str]:
        """The entries found in the kind's own folder (not plugins, entry points or test registrations)."""
        self._ensure_scanned()
        return sorted(self._folder_names)

    def entries(self) -> Iterator[Entry[T]]:
        self._ensure_scanned()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_scanned()
        return name in self._entries

    def get(self, name: str) -> T:
        return self.entry(name).load()

    def entry(self, name: str) -> Entry[T]:
        self._ensure_scanned()
        if name not in self._entries:
            raise UnknownEntryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (f"Unknown {self.singular} '{name}'.{hint} "
                f"Run `python -m benchmark list {self.kind}` to see all {len(self._entries)} entries.")


# ----------------------------------------------------------------------------------------- static scan
def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # imports parent packages only, never ``package`` itself
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def scan_code_package(package: str, variable: str) -> list[Entry[Any]]:
    """Entries of every ``@<variable>.register("name")`` in the package's modules, found by reading them."""
    folder = _package_dir(package)
    if folder is None:
        return []
    entries = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as error:
            raise UserError(f"{path}: cannot be read ({error}); fix it or move it out of {folder}") from None
        for node in tree.body:
            if not isinstance(node, ast.ClassDef | ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                name = _registered_name(decorator, variable)
                if name is None:
                    continue
                entries.append(Entry(name=name, description=_static_description(node, decorator),
                                     target=f"{package}.{path.stem}:{node.name}"))
    return entries


def _registered_name(decorator: ast.expr, variable: str) -> str | None:
    if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "register" and isinstance(decorator.func.value, ast.Name)
            and decorator.func.value.id == variable and decorator.args
            and isinstance(decorator.args[0], ast.Constant) and isinstance(decorator.args[0].value, str)):
        return decorator.args[0].value
    return None


def _static_description(node: ast.ClassDef | ast.FunctionDef, decorator: ast.Call) -> str:
    for keyword in decorator.keywords:
        if keyword.arg == "description" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    if len(decorator.args) > 1 and isinstance(decorator.args[1], ast.Constant):
        return str(decorator.args[1].value)
    for stmt in node.body if isinstance(node, ast.ClassDef) else []:
        if (isinstance(stmt, ast.Assign | ast.AnnAssign) and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str) and stmt.value.value):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "description" for t in targets):
                return first_line(stmt.value.value)
    return first_line(ast.get_docstring(node))


def scan_data_package(package: str, loader: str) -> list[Entry[Any]]:
    """One entry per data file of the package folder (its name is the file's stem)."""
    folder = _package_dir(package)
    if folder is None:
        return []
    module_name, _, attr = loader.partition(":")

    def load(path: Path) -> Any:
        return getattr(importlib.import_module(module_name), attr)(path)

    entries = []
    for path in sorted(folder.iterdir()):
        if path.suffix in DATA_SUFFIXES and not path.name.startswith("_"):
            entries.append(Entry(name=path.stem, description=data_description(path), path=path, loader=load))
    return entries


def read_data_file(path: Path) -> dict[str, Any]:
    """A YAML / TOML / JSON mapping, or a :class:`ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            data = _tomllib().loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, _tomllib().TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot parse: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def data_description(path: Path) -> str:
    try:
        return first_line(str(read_data_file(path).get("description") or ""))
    except ConfigError:
        return "(unreadable file: its error is shown when it is used)"


# ----------------------------------------------------------------------------------------- names and plugins
def check_entry_name(name: str, kind: str) -> None:
    """Entry names become parts of file names (entries, run folders): letters, digits, '.', '_', '-'."""
    check_name(name, f"{kind} name")


def load_plugin(path: str | Path) -> None:
    """Import a user's Python file so that its ``@REGISTRY.register`` decorators run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Plugin file not found: {path}")
    if path.suffix != ".py":
        raise UserError(f"A plugin must be a .py file, got {path}")
    module_name = f"unlearn_arena_plugin_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"Cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    before = {r.kind: {n for n, e in r._entries.items() if e.obj is not None} for r in ALL_REGISTRIES}
    for registry in ALL_REGISTRIES:
        registry._ensure_scanned()
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:  # a typo in the user's file: say where, not a traceback
        del sys.modules[module_name]
        raise UserError(f"plugin {path.name}: {error.msg} at line {error.lineno}") from None
    for registry in ALL_REGISTRIES:
        for name, entry in registry._entries.items():
            if entry.obj is not None and name not in before[registry.kind] and entry.source == "builtin" \
                    and getattr(entry.obj, "__module__", "") == module_name:
                entry.source = f"plugin {path.name}"
    if not any(e.source == f"plugin {path.name}" for r in ALL_REGISTRIES for e in r._entries.values()):
        log.warning("Plugin %s registered no entries", path)


DEFENSES: Registry[Any] = Registry("defenses", "DEFENSES", package="defenses")
ATTACKS: Registry[Any] = Registry("attacks", "ATTACKS", package="attacks")
JUDGES: Registry[Any] = Registry("judges", "JUDGES", package="benchmark.judges")
MODELS: Registry[Any] = Registry("models", "MODELS", package="benchmark.models")
TASKS: Registry[Any] = Registry("tasks", "TASKS", data_package="benchmark.tasks",
                                data_loader="benchmark.api.task:load_task_file")
PROMPT_SETS: Registry[Any] = Registry("prompt-sets", "PROMPT_SETS", data_package="prompts.sets",
                                      data_loader="prompts.spec:load_prompt_set_file")
SUITES: Registry[Any] = Registry("suites", "SUITES", data_package="benchmark.suites",
                                 data_loader="benchmark.api.registry:suite_path")

ALL_REGISTRIES: list[Registry[Any]] = [DEFENSES, ATTACKS, JUDGES, TASKS, PROMPT_SETS, MODELS, SUITES]
REGISTRIES_BY_KIND: dict[str, Registry[Any]] = {r.kind: r for r in ALL_REGISTRIES}


def suite_path(path: Path) -> Path:
    """A suite entry is its file; the CLI reads it as a suite file."""
    return path
