"""Run configuration: dataclasses that CLI flags and suite files (YAML or TOML) both fill.

A suite file holds the same keys as :class:`RunConfig` (``sampler`` as a nested table). Values given on
the command line override the suite's. The resolved config, with ``all`` expanded and model defaults
filled in, is what the run hashes and saves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.api.errors import ConfigError
from benchmark.api.registry import SUITES
from benchmark.suites import read_suite


@dataclass
class SamplerConfig:
    """How images are sampled. ``None`` means "the model's default" (filled in at resolve time)."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    images_per_prompt: int = 1
    batch_size: int = 8
    seed: int = 0  # base seed for prompts whose source file prescribes none

    def validate(self) -> None:
        for name in ("num_inference_steps", "height", "width"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"sampler.{name} must be positive, got {value}")
        if self.images_per_prompt < 1:
            raise ConfigError(f"sampler.images_per_prompt must be >= 1, got {self.images_per_prompt}")
        if self.batch_size < 1:
            raise ConfigError(f"sampler.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class RunConfig:
    """Everything that determines a run's results (and ``out``/``plugins``, which do not)."""

    model: str = "sd-mini"
    model_revision: str | None = None
    tasks: list[str] = field(default_factory=list)  # empty: the model's default tasks
    defenses: list[str] = field(default_factory=lambda: ["none"])
    attacks: list[str] = field(default_factory=lambda: ["none"])
    prompts: str | None = None  # a prompt file replacing the task's attack prompts
    prompt_column: str | None = None
    benign_prompts: str | None = None  # a prompt file replacing the task's benign prompts
    max_prompts: int | None = None  # first N attack prompts of each task (None: all)
    max_benign: int | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    judge_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    data_dir: str | None = None
    name: str | None = None
    out: str = "runs"
    plugins: list[str] = field(default_factory=list)

    def validate(self) -> None:
        self.sampler.validate()
        if not self.defenses:
            raise ConfigError("at least one defense is needed (use 'none' for the undefended model)")
        if not self.attacks:
            raise ConfigError("at least one attack is needed (use 'none' to replay the task's prompts)")
        for name in ("max_prompts", "max_benign"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"dtype must be auto, fp32, fp16 or bf16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


LIST_KEYS = {"tasks", "defenses", "attacks", "plugins"}


def split_names(value: str | list[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]``; order kept, duplicates dropped."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in names:
                names.append(part)
    return names


def config_from_mapping(data: dict[str, Any], origin: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a plain mapping, rejecting unknown keys by name."""
    data = dict(data)
    # Accept the singular spellings the CLI uses (--task, --defense, --attack, --plugin).
    for singular, plural in (("task", "tasks"), ("defense", "defenses"), ("attack", "attacks"),
                             ("plugin", "plugins")):
        if singular in data:
            if plural in data:
                raise ConfigError(f"{origin}: give either '{singular}' or '{plural}', not both")
            data[plural] = data.pop(singular)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    sampler_data = data.pop("sampler", None) or {}
    if not isinstance(sampler_data, dict):
        raise ConfigError(f"{origin}: 'sampler' must be a table/mapping")
    sampler_known = {f.name for f in dataclasses.fields(SamplerConfig)}
    bad = sorted(set(sampler_data) - sampler_known)
    if bad:
        raise ConfigError(f"{origin}: unknown sampler key(s) {bad}; known: {sorted(sampler_known)}")
    for key in LIST_KEYS & set(data):
        data[key] = split_names(data[key])
    problems = _type_problems(RunConfig, data) + _type_problems(SamplerConfig, sampler_data, prefix="sampler.")
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))
    return RunConfig(**data, sampler=SamplerConfig(**sampler_data))


def _type_problems(cls: type, values: dict[str, Any], prefix: str = "") -> list[str]:
    """The problems of ``values`` against ``cls``'s field types, one line per key: a mistyped suite value fails
    before any work, naming the key, not later as a TypeError. Strict (``"5"`` is no int; an int is a float) and
    the values are kept as given, so a valid config hashes, and keys its cells, exactly as before."""
    import pydantic  # deferred: `benchmark list` stays light

    fields = {f.name: f.type for f in dataclasses.fields(cls) if f.name in values and f.name != "sampler"}
    model = pydantic.create_model(f"{cls.__name__}Values", __config__=pydantic.ConfigDict(strict=True),
                                  **{name: (annotation, ...) for name, annotation in fields.items()})
    try:
        model.model_validate({name: values[name] for name in fields})
    except pydantic.ValidationError as error:
        return [f"{prefix}{'.'.join(str(part) for part in item['loc'])}={item.get('input')!r}: {item['msg']}"
                for item in error.errors()]
    return []


def load_suite_file(path: str | Path) -> dict[str, Any]:
    """A suite file's run keys, its ``include:`` resolved (:func:`benchmark.suites.read_suite`)."""
    data = read_suite(path)
    data.pop("description", None)  # suites describe themselves for `benchmark list suites`
    # A paper suite's `source` (paper, table, upstream code, published protocol) documents the run and is
    # read by `compare --published` (reports/published.py); it is not a run key.
    data.pop("source", None)
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins key by key; the ``sampler`` and ``*_options`` tables merge one level deep."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if key in ("sampler", "defense_options", "attack_options", "judge_options") and isinstance(
            merged.get(key), dict
        ):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def parse_option(assignment: str) -> tuple[str, str, str, Any]:
    """``defense:negative-prompt.words=nudity,naked`` -> ("defense", "negative-prompt", "words", value).

    The value is parsed as YAML (numbers, booleans, lists) and falls back to the raw string.
    """
    try:
        target, raw_value = assignment.split("=", 1)
        kind, rest = target.split(":", 1)
        name, key = rest.rsplit(".", 1)
    except ValueError:
        raise ConfigError(
            f"--option {assignment!r}: expected KIND:NAME.KEY=VALUE, e.g. defense:negative-prompt.scale=2"
        ) from None
    if kind not in ("defense", "attack", "judge"):
        raise ConfigError(f"--option {assignment!r}: KIND must be defense, attack or judge")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        value = raw_value
    return kind, name, key, value


def config_from_command(suite: str | None, flags: dict[str, Any], sampler: dict[str, Any],
                        assignments: list[str]) -> RunConfig:
    """A run's config as a command gives it: the suite (a registered name or a file; None: none) with the
    command's values on top. ``flags`` are :class:`RunConfig` keys and ``sampler`` :class:`SamplerConfig` keys
    (None: not given); ``assignments`` are ``--option KIND:NAME.KEY=VALUE`` strings."""
    data: dict[str, Any] = {}
    if suite:
        path = Path(suite) if Path(suite).is_file() else SUITES.get(suite)
        data = load_suite_file(path)
        data.setdefault("name", Path(path).stem)  # run directories are named after their suite
    given = {k: v for k, v in flags.items() if v is not None}
    given["sampler"] = {k: v for k, v in sampler.items() if v is not None}
    merged = merge(data, given)
    for assignment in assignments:
        kind, name, key, value = parse_option(assignment)
        table = {k: dict(v) for k, v in merged.get(f"{kind}_options", {}).items()}
        table.setdefault(name, {})[key] = value
        merged[f"{kind}_options"] = table
    return config_from_mapping(merged, origin=str(suite or "command line"))
