"""Resolve a run's config into a checked plan, before any model is loaded or any cell is computed.

Everything a user can get wrong fails here, each with a one-line :class:`~benchmark.api.errors.UserError`:
names (with did-you-mean), every option of every defense, attack and judge (names, types, ranges, allowed
values), the components' own context checks (``check_inputs``: files they name, what the task provides),
the prompt files, the run's name and output folder. ``--dry-run`` runs exactly this.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.api.component import CheckContext
from benchmark.api.errors import ConfigError, PathEscapeError, UnknownEntryError, UserError
from benchmark.api.model import DTYPES, ModelSpec, get_model_spec, resolve_device, resolve_dtype
from benchmark.api.paths import check_name
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, MODELS, PROMPT_SETS, TASKS, Registry, load_plugin
from benchmark.api.task import JudgeSpec, Task
from benchmark.harness.config import RunConfig
from benchmark.hashing import file_hash, stable_hash


@dataclass
class Plan:
    """A resolved, checked run: the config with defaults filled and ``all`` expanded, and the objects it names."""

    config: RunConfig
    spec: ModelSpec
    tasks: list[Task]
    judge_options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # task -> role -> options
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return run_id(self.config)


def expand(names: list[str], registry: Registry[Any], keep_first: str = "none") -> list[str]:
    """``all`` -> every registered name; the reference entry ``none`` is always run, first."""
    out: list[str] = []
    for name in names:
        for item in (registry.names() if name == "all" else [name]):
            registry.entry(item)  # unknown names fail here, with a did-you-mean
            if item not in out:
                out.append(item)
    return [keep_first] + [n for n in out if n != keep_first]


def check_sampler(config: RunConfig) -> None:
    sampler = config.sampler
    if sampler.guidance_scale is not None and not math.isfinite(float(sampler.guidance_scale)):
        raise ConfigError(f"sampler.guidance_scale must be a finite number, got {sampler.guidance_scale}")
    if sampler.guidance_scale is not None and sampler.guidance_scale < 0:
        raise ConfigError(f"sampler.guidance_scale must be >= 0, got {sampler.guidance_scale}")


def check_out_dir(out: str) -> Path:
    """The store root: an existing or creatable folder we can write into (created here if missing)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot write there ({error.strerror or error}); pass a folder you can "
                          "write to") from None
    return path


def _check_option_targets(kind: str, options: dict[str, dict[str, Any]], registry: Registry[Any],
                          used: list[str], notes: list[str]) -> None:
    for name in options:
        if name not in registry:
            raise UnknownEntryError(f"--option {kind}:{name}...: " + registry.unknown_message(name))
        if name not in used:
            notes.append(f"options given for {kind} '{name}', which this run does not use: ignored")


def resolve(config: RunConfig) -> Plan:
    """Check everything and fill defaults; returns the :class:`Plan`. Loads plugins, never a model."""
    config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler))
    config.validate()
    check_sampler(config)
    if config.name is not None:
        check_name(config.name, "--name")
    check_out_dir(config.out)
    for plugin in config.plugins:
        load_plugin(plugin)
    spec = get_model_spec(config.model)
    spec.check_available(config.model_revision)
    notes: list[str] = []
    tasks = _tasks(config, spec)
    all_defenses, all_attacks = _select_defenses(config), _select_attacks(config, notes)
    _check_option_targets("defense", config.defense_options, DEFENSES, config.defenses, notes)
    _check_option_targets("attack", config.attack_options, ATTACKS, config.attacks, notes)

    # Every component is built now: bad option values fail before anything is prepared.
    defenses = [DEFENSES.get(d)(**config.defense_options.get(d, {})) for d in config.defenses]
    attacks = [ATTACKS.get(a)(**config.attack_options.get(a, {})) for a in config.attacks]
    for defense in defenses:
        if not defense.supports(spec.name):
            raise ConfigError(f"defense '{defense.name}' does not support model '{spec.name}' "
                              f"(it supports {', '.join(defense.supported_models)})")
    judge_options = _judge_options(config, tasks, notes)
    # A component that ``all`` brought in but that cannot run here (Ring-A-Bell without concept material
    # for a task) is left out with a note; one the user named fails with its own message.
    defenses = _runnable(defenses, tasks, spec.name, config.data_dir, from_all=all_defenses, notes=notes)
    attacks = _runnable(attacks, tasks, spec.name, config.data_dir, from_all=all_attacks, notes=notes)
    config.defenses = [d.name for d in defenses]
    config.attacks = [a.name for a in attacks]
    for task in tasks:
        ctx = CheckContext(model=spec.name, task=task, data_dir=config.data_dir)
        check_prompt_sources(config, task)
        for role, judge_spec in (("concept", task.judge), ("utility", task.utility_judge)):  # validated here
            JUDGES.get(judge_spec.name).check_options(judge_options[task.name][role], ctx)
    _fill_defaults(config, spec)
    return Plan(config=config, spec=spec, tasks=tasks, judge_options=judge_options, notes=notes)


def _tasks(config: RunConfig, spec: ModelSpec) -> list[Task]:
    """The run's tasks (the model's default ones unless named), each meant for the model."""
    config.tasks = config.tasks or list(spec.default_tasks)
    if not config.tasks:
        raise ConfigError(f"model '{config.model}' has no default task: pass --task")
    tasks = [TASKS.get(name) for name in config.tasks]
    for task in tasks:  # a local folder may run any task; a registered model only the tasks meant for it
        if "*" not in task.models and spec.name not in task.models and config.model in MODELS:
            raise ConfigError(f"task '{task.name}' is meant for model(s) {', '.join(task.models)}, not "
                              f"'{spec.name}' (its prompts and judge belong to that model's world); pick another "
                              f"--task or --model")
    return tasks


def _select_defenses(config: RunConfig) -> bool:
    """Expand ``config.defenses``; True when the user asked for ``all``."""
    asked_all = "all" in config.defenses
    config.defenses = expand(config.defenses, DEFENSES)
    if asked_all:  # "all" leaves out defenses that need user-supplied data (a checkpoint path)
        config.defenses = [d for d in config.defenses if d in config.defense_options
                           or getattr(DEFENSES.get(d), "runs_without_options", True)]
    return asked_all


def _select_attacks(config: RunConfig, notes: list[str]) -> bool:
    """Expand ``config.attacks``; True when the user asked for ``all``."""
    asked_all = "all" in config.attacks
    asked_attacks = list(config.attacks)
    config.attacks = expand(config.attacks, ATTACKS)
    if not asked_all:
        return False
    # "all" means every attack that can run without user-supplied data and is in "all"
    explicit = {a for a in asked_attacks if a != "all"}  # named beside "all": kept
    kept = []
    for a in config.attacks:
        cls = ATTACKS.get(a)
        if not getattr(cls, "runs_without_options", True):
            continue
        if not getattr(cls, "in_all", True) and a not in explicit:
            notes.append(f"attack {a} left out of 'all' (not in 'all' to keep the default job's time); "
                         f"name it (--attack {a}) or run --suite extended-attacks")
            continue
        kept.append(a)
    config.attacks = kept
    return True


def _judge_options(config: RunConfig, tasks: list[Task], notes: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each task's judges' options (task -> role -> options), the user's ``--option judge:...`` checked."""
    judge_options: dict[str, dict[str, dict[str, Any]]] = {}
    used_judges: list[str] = []
    for task in tasks:
        judge_options[task.name] = {}
        for role, judge_spec in (("concept", task.judge), ("utility", task.utility_judge)):
            judge_options[task.name][role] = judge_options_for(judge_spec, config.judge_options)
            used_judges.append(judge_spec.name)
    _check_option_targets("judge", config.judge_options, JUDGES, used_judges, notes)
    return judge_options


def _fill_defaults(config: RunConfig, spec: ModelSpec) -> None:
    """The model's sampler defaults where the user set none; the device and dtype resolved to what runs."""
    sampler, defaults = config.sampler, spec.defaults
    sampler.num_inference_steps = sampler.num_inference_steps or defaults.num_inference_steps
    sampler.guidance_scale = sampler.guidance_scale if sampler.guidance_scale is not None else defaults.guidance_scale
    sampler.height = sampler.height or defaults.height
    sampler.width = sampler.width or defaults.width
    device = resolve_device(config.device)
    config.device = device.type if device.index is None else str(device)
    config.dtype = {dtype: name for name, dtype in DTYPES.items()}[resolve_dtype(config.dtype, device)]


def _runnable(components: list[Any], tasks: list[Task], model: str, data_dir: str | None, *, from_all: bool,
              notes: list[str]) -> list[Any]:
    kept = []
    for component in components:
        try:
            for task in tasks:
                component.check_inputs(CheckContext(model=model, task=task, data_dir=data_dir))
                component.check_files(CheckContext(model=model, task=task, data_dir=data_dir))
        except UserError as error:
            if not from_all or component.name == "none":
                raise
            notes.append(f"{component.component_kind} {component.name} left out of 'all': {error}")
            continue
        kept.append(component)
    return kept


def judge_options_for(spec: JudgeSpec, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A task's judge options with the user's ``--option judge:NAME.KEY=VALUE`` on top."""
    return {**spec.options, **overrides.get(spec.name, {})}


def replaced_set(value: str | None) -> str | None:
    """``--prompts`` / ``--benign-prompts`` take a prompt file or a registered prompt set's name (e.g. a paper
    suite replays ``mma-diffusion-nsfw`` as its attack prompts): the set's name when ``value`` names one and is
    not a file."""
    if value and not Path(value).is_file() and value in PROMPT_SETS:
        return value
    return None


def check_prompt_sources(config: RunConfig, task: Task) -> None:
    """The prompt files a task's cells need exist (a set that is not used, ``--max-benign 0``, is not asked for)."""
    needs = []
    if config.max_prompts != 0:
        needs.append(("--prompts", config.prompts, task.attack_prompts))
    if config.max_benign != 0:
        needs.append(("--benign-prompts", config.benign_prompts, task.benign_prompts))
    for flag, file, set_name in needs:
        if replaced_set(file):
            file, set_name = None, replaced_set(file)
        if file:
            if not Path(file).is_file():
                raise ConfigError(f"{flag} {file}: no such file or registered prompt set "
                                  "(`python -m benchmark list prompt-sets`)")
            continue
        prompt_set = PROMPT_SETS.get(set_name)
        available = getattr(prompt_set, "available", None)
        hub = getattr(prompt_set, "hub_dataset", None)
        if available is not None and not available(config.data_dir) and not hub:
            raise ConfigError(prompt_set.missing_message(config.data_dir))


def run_id(config: RunConfig) -> str:
    """Named by content: the same resolved config gives the same run directory, so rerunning a command
    finds its cells. ``out``, ``name``, the batch size and plugin paths do not enter it (plugin
    contents do)."""
    identity = config.to_dict()
    for key in ("out", "name", "plugins"):
        identity.pop(key)
    identity["sampler"].pop("batch_size")  # changes speed, never an image
    identity["plugin_contents"] = sorted(file_hash(p) for p in config.plugins)
    for key in ("prompts", "benign_prompts"):
        if identity[key] and not replaced_set(identity[key]):  # a file by its content; a set by its name
            identity[key] = file_hash(identity[key])
    prefix = config.name or check_name_or_default(config.model.rstrip("/").split("/")[-1])
    return f"{prefix}-{stable_hash(identity, 10)}"


def check_name_or_default(name: str) -> str:
    """A model folder's name as a run-name prefix, or 'model' when it is not a safe file name."""
    try:
        return check_name(name, "model name")
    except PathEscapeError:  # the folder's name has characters a file name must not have
        return "model"
