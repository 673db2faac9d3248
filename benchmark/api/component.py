"""What defenses, attacks and judges share: typed, validated options and a stable config for cell keys.

A component declares its options as a nested ``Options`` dataclass. Types and constraints are ordinary
annotations, checked by pydantic when the component is built (at resolve time, before any work)::

    @dataclass
    class Options:
        threshold: Annotated[float, Field(ge=0, le=1, description="cosine a paraphrase must keep")] = 0.8
        preset: Annotated[Literal["auto", "paper", "mini"], Field(description="budget preset")] = "auto"

An option that names a file is typed :class:`benchmark.api.files.FilePath` (``LocalPath`` for a file or a
folder, ``PathOrHubId`` for a local path or a hub id): it enters the cell keys by the file's content hash,
never by its path, and a missing file fails when the component is checked (:meth:`Component.check_files`).

A field's ``Field(description=...)`` is its help text (``benchmark list --options NAME`` prints it). Checks that
need the run's context (the model, the task, the data directory) go in :meth:`Component.check_inputs`,
which the resolver calls for every task before anything is prepared, in the manner of diffusers'
``check_inputs``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from benchmark.api.errors import OptionError
from benchmark.api.files import FilePath, content_hash, full_sha256, missing_message
from benchmark.api.presets import Presets

if TYPE_CHECKING:
    from benchmark.api.task import Task


@dataclass
class NoOptions:
    """A component without options."""


@dataclass(frozen=True)
class CheckContext:
    """What :meth:`Component.check_inputs` may look at: the resolved run, before anything is loaded."""

    model: str  # the registered model name (or a folder's name)
    task: Task
    data_dir: str | None = None


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``benchmark list --options`` shows it."""

    name: str
    type: str
    default: Any
    allowed: str  # constraints in words ("0 <= x <= 1", "one of auto, paper, mini"), "" when any value of the type
    help: str


class Component:
    """Base of defenses, attacks and judges.

    ``component_kind`` (defense, attack, judge) names it in messages; ``version`` is bumped when the
    algorithm changes so that old cached artifacts are not reused.
    """

    component_kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Options: ClassVar[type] = NoOptions
    # Options that change speed or memory, never a result (gradient checkpointing, measured batch sizes): left
    # out of :meth:`config`, so setting them keeps every cell key and reuses every cached cell and artifact.
    runtime_options: ClassVar[tuple[str, ...]] = ()
    # Options added after a component shipped, with the value that reproduces its earlier behaviour: left out
    # of :meth:`config` while they keep that value, so earlier cells and shipped artifacts stay valid.
    added_options: ClassVar[dict[str, Any]] = {}
    # Per-model values of options left unset (:class:`benchmark.api.presets.Presets`); they enter the cell
    # keys through :meth:`config`. None: the options' own defaults serve every model.
    presets: ClassVar[Presets | None] = None
    # The run's data directory (--data-dir), set by the resolver and the runner: file options given relative
    # to it (Ring-A-Bell's ``pairs``) resolve under it in :meth:`resolve_file`.
    data_dir: str | None = None

    def __init__(self, **options: Any):
        self.options = type(self).validate_options(options)

    # -- options ----------------------------------------------------------------------------------
    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> Any:
        """The ``Options`` instance for ``options``, or an :class:`OptionError` naming each bad option, its
        value and what is allowed. Builds nothing heavy: judges validate here without loading a model."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = [key for key in options if key not in fields]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise OptionError(
                f"{cls.component_kind} '{cls.name}' has no option {', '.join(hints)}; its options are: "
                f"{', '.join(sorted(fields)) or 'none'} (`python -m benchmark list --options {cls.name}`)"
            )
        import pydantic  # deferred: `benchmark list` must stay light

        try:
            return _adapter(cls.Options).validate_python(dict(options))
        except pydantic.ValidationError as error:
            infos = {info.name: info for info in cls.option_infos()}
            problems, hints = [], []
            for item in error.errors():
                key = str(item["loc"][0]) if item["loc"] else "?"
                info = infos.get(key)
                allowed = f"{info.type}" + (f", {info.allowed}" if info and info.allowed else "") if info else ""
                problems.append(f"option {key}={options.get(key)!r}: {item['msg']}"
                                + (f" (allowed: {allowed})" if allowed else ""))
                hints += _value_hint(item, key, cls.Options)
            message = f"{cls.component_kind} '{cls.name}': " + "; ".join(dict.fromkeys(problems))
            if hints:  # a misspelt named value (a preset, a label): suggest the close one
                message += f"; did you mean {' or '.join(dict.fromkeys(hints))}?"
            raise OptionError(message) from None

    @classmethod
    def option_infos(cls) -> list[OptionInfo]:
        """Every option with its type, default, constraints and help (the field's description)."""
        schema = _adapter(cls.Options).json_schema(mode="validation")
        properties = schema.get("properties", {})
        infos = []
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            prop = properties.get(f.name, {})
            infos.append(OptionInfo(name=f.name, type=_schema_type(prop, schema.get("$defs", {})) or _type_name(f.type),
                                    default=default,
                                    allowed=_constraints(prop, schema.get("$defs", {})),
                                    help=prop.get("description", "")))
        return infos

    def check_inputs(self, ctx: CheckContext) -> None:
        """Checks that need the run's context (files the options name, what the task provides); raise a
        :class:`benchmark.api.errors.UserError` that says what to do. Called before any work."""

    def keyed_options(self) -> dict[str, Any]:
        """The options that can change a result: every option but the runtime ones, and the added ones only
        when set away from the value that reproduces the earlier behaviour. An option naming a file
        (:class:`benchmark.api.files.FilePath`) is keyed by the file's content hash, never its path."""
        files = self.file_options()
        return {k: (self.file_key(k) if k in files else v) for k, v in dataclasses.asdict(self.options).items()
                if k not in self.runtime_options and not (k in self.added_options and v == self.added_options[k])}

    # -- options that name files ----------------------------------------------------------------------
    def file_options(self) -> dict[str, FilePath]:
        """The set options that name a file or folder (typed :class:`~benchmark.api.files.FilePath`)."""
        return {f.name: value for f in dataclasses.fields(self.options)
                if isinstance(value := getattr(self.options, f.name), FilePath)}

    def resolve_file(self, option: str, value: str) -> Path:
        """Where option ``option``'s value points (override for paths relative to something else, e.g. the
        data directory: ``self.data_dir``, which :meth:`check_files` sets from its context)."""
        return Path(value).expanduser()

    def file_key(self, option: str) -> str:
        """What option ``option`` contributes to the cell keys: the content hash of the file or folder it
        names (a :class:`~benchmark.api.files.PathOrHubId` naming nothing local: the id as written)."""
        value = self.file_options()[option]
        path = self.resolve_file(option, value)
        if not value.exists(path):
            if not value.must_exist:
                return str(value)
            raise OptionError(missing_message(self.component_kind, self.name, option, value, path, value.what))
        return content_hash(path)

    def check_files(self, ctx: CheckContext | None = None) -> None:
        """Every file or folder the options name exists; else an :class:`OptionError` naming the option and
        what to do. Called by the resolver with :meth:`check_inputs`, before any work."""
        if ctx is not None:
            self.data_dir = ctx.data_dir
        for option, value in self.file_options().items():
            path = self.resolve_file(option, value)
            if value.must_exist and not value.exists(path):
                raise OptionError(missing_message(self.component_kind, self.name, option, value, path, value.what))

    def named_files(self) -> list[dict[str, Any]]:
        """Each local file or folder the options name: its role (``kind:name.option``), path and sha256,
        for the run's provenance."""
        named = []
        for option, value in self.file_options().items():
            path = self.resolve_file(option, value)
            if value.exists(path):
                named.append({"role": f"{self.component_kind}:{self.name}.{option}", "path": str(path),
                              "sha256": full_sha256(path)})
        return named

    def preset_values(self, model_name: str | None) -> dict[str, Any]:
        """The preset options for ``model_name`` with the ones the user set on top (an option ``preset``
        other than ``auto`` names the table). Empty without :attr:`presets`."""
        if self.presets is None:
            return {}
        try:
            return self.presets.values(model_name, self.options, getattr(self.options, "preset", "auto"))
        except OptionError as error:
            raise OptionError(f"{self.component_kind} '{self.name}': {error}") from None

    def config(self) -> dict[str, Any]:
        """The resolved options, version and presets: what enters this component's cell keys."""
        config = {"name": self.name, "version": self.version, "options": self.keyed_options()}
        if self.presets is not None:  # editing a preset must recompute, not reuse a cell made with the old one
            config[self.presets.key] = self.presets.key_entry()
        return config


def _value_hint(item: dict[str, Any], key: str, options_cls: type) -> list[str]:
    """``key='close value'`` when pydantic rejected a string as none of a ``Literal``'s values."""
    if item.get("type") != "literal_error" or not isinstance(item.get("input"), str):
        return []
    schema = _adapter(options_cls).json_schema(mode="validation")
    allowed = _enum_values(schema.get("properties", {}).get(key, {}), schema.get("$defs", {}))
    close = difflib.get_close_matches(item["input"], [str(v) for v in allowed], n=1)
    if not close:
        return []
    return [f"{key}={close[0]!r}" + (f" (for {item['input']!r})" if len(item["loc"]) > 1 else "")]


def _enum_values(prop: dict[str, Any], defs: dict[str, Any]) -> list[Any]:
    """Every named value a JSON-schema property allows (through unions, aliases and list items)."""
    if "$ref" in prop:
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
    values = list(prop.get("enum", [])) + ([prop["const"]] if "const" in prop else [])
    for variant in prop.get("anyOf", []):
        values += _enum_values(variant, defs)
    if isinstance(prop.get("items"), dict):
        values += _enum_values(prop["items"], defs)
    return values


@functools.cache
def _adapter(options_cls: type) -> Any:
    import pydantic

    return pydantic.TypeAdapter(options_cls)


_JSON_TYPES = {"number": "float", "integer": "int", "string": "str", "boolean": "bool", "null": "None",
               "array": "list", "object": "dict"}


def _schema_type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """``int | None``-style type of one JSON-schema property (aliases resolved)."""
    names: list[str] = []
    for variant in prop.get("anyOf") or [prop]:
        if "$ref" in variant:
            variant = defs.get(variant["$ref"].rsplit("/", 1)[-1], {})
        if "enum" in variant or "const" in variant:
            values = variant.get("enum", [variant.get("const")])
            kind = {type(v).__name__ for v in values}
            names.append(kind.pop() if len(kind) == 1 else "value")
            continue
        kind = variant.get("type")
        if variant.get("format") in ("file", "file-or-folder", "local-path-or-hub-id"):  # benchmark.api.files
            names.append(variant["format"].replace("-", " "))
            continue
        if isinstance(kind, list):
            names += [_JSON_TYPES.get(k, k) for k in kind]
        elif kind == "array" and isinstance(variant.get("items"), dict) and variant["items"].get("type"):
            names.append(f"list[{_JSON_TYPES.get(variant['items']['type'], variant['items']['type'])}]")
        elif kind:
            names.append(_JSON_TYPES.get(kind, kind))
    return " | ".join(dict.fromkeys(names))


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    # Annotated[int | None, Field(ge=1)] -> int | None: constraints are shown separately.
    if text.startswith("Annotated["):
        depth, end = 0, len(text)
        for i, ch in enumerate(text[len("Annotated["):], start=len("Annotated[")):
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif ch == "," and depth == 0:
                end = i
                break
        text = text[len("Annotated["):end]
    return text.strip()


def _constraints(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """Constraints of one JSON-schema property in words."""
    variants = prop.get("anyOf") or [prop]
    words = []
    for variant in variants:
        if "$ref" in variant:
            variant = defs.get(variant["$ref"].rsplit("/", 1)[-1], {})
        if "enum" in variant:
            words.append("one of " + ", ".join(str(v) for v in variant["enum"]))
        if "const" in variant:
            words.append(repr(variant["const"]))
        bounds = []
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in variant:
                bounds.append(f"{op} {variant[key]}")
        if bounds:
            words.append("x " + " and ".join(bounds))
        for key, what in (("minLength", "at least {} characters"), ("minItems", "at least {} items")):
            if key in variant:
                words.append(what.format(variant[key]))
        if variant.get("type") == "null" and len(variants) > 1:
            words.append("null (the default rule)")
    return "; ".join(words)
