"""The built-in defenses' options and context checks, and what built-ins may import.

* Every bad option value fails when the defense is built (``validate_options``), with an
  :class:`OptionError` naming the option, the value and what is allowed.
* Annotating the options changed no cell key and no prepare key: the default configurations hash as they
  did before (SafeRedir's shipped redirectors are reused only while ``prepare_config`` is unchanged).
* Checks that need the task (concept words to act on) run in ``check_inputs``, before any work.
* Built-in attacks and defenses import the core API, the store and hashing, the sd-mini world and the
  prompt loaders, never the stages, the runner, the CLI or the reports.
"""

from __future__ import annotations

import ast
import dataclasses

import pytest

from benchmark.api.component import CheckContext
from benchmark.api.errors import ConfigError, OptionError, UserError
from benchmark.api.registry import DEFENSES, TASKS
from benchmark.hashing import stable_hash
from conftest import REPO, TOY

# stable_hash(Cls().config()) of every built-in defense, measured before the options were annotated.
DEFAULT_CONFIG_HASHES = {
    "checkpoint": "40c1cfcf22e563c9",
    "esd-u": "20de8dec837c9b13",
    "esd-x": "3f55f13386b6f0b4",
    "filter": "e4c18df3668bdf25",
    "keyword-filter": "6337a5c511025d44",
    "negative-prompt": "971ffe349f03ec26",
    "none": "ff73448fbf806bba",
    "saferedir": "32e5edd526e02c3c",
    "sld": "5a0446b476ad8069",
    "uce": "adaad20da8b2ad83",
    "rece": "b12b024c1dba6203",
    "safree": "80a89d3dbb394e54",
    "advunlearn": "77c8ac202f579298",
    "mace": "0a1c38a176b25301",
}
SAFEREDIR_PREPARE_HASH = "bfab68ed621ef19c"  # stable_hash(SafeRedir().prepare_config()), measured alike

BAD_VALUES = [
    ("sld", "preset", "maximum", "one of weak, medium, strong, max"),
    ("esd-x", "lr", 0, "x > 0"),
    ("esd-u", "iterations", 0, "x >= 1"),
    ("esd-x", "ddim_steps", -3, "x >= 1"),
    ("esd-x", "eta", -1, "x >= 0"),
    ("esd-x", "batch_size", 0, "x >= 1"),
    ("uce", "lamb", 0, "x > 0"),
    ("uce", "erase_scale", -1, "x >= 0"),
    ("uce", "preserve_scale", -0.5, "x >= 0"),
    ("filter", "detector", "nsfw-magic", "one of auto, mini-detector, sd-safety-checker"),
    ("filter", "threshold", 1.5, "x >= 0 and <= 1.01"),
    ("checkpoint", "component", "vae", "one of auto, unet, text_encoder"),
    ("saferedir", "behaviour", "paper", "one of project, official"),
    ("saferedir", "network", "huge", "one of auto, small, official"),
    ("saferedir", "threshold", -0.1, "x >= 0 and <= 1.01"),
    ("saferedir", "replace_steps", -1, "x >= 0"),
    ("saferedir", "target_fpr", 1.5, "x >= 0 and <= 1"),
    ("saferedir", "pairs", 0, "x >= 1"),
    ("saferedir", "lr", -1, "x > 0"),
]


def test_default_configs_keep_their_cell_keys():
    for name, expected in DEFAULT_CONFIG_HASHES.items():
        assert stable_hash(DEFENSES.get(name)().config()) == expected, name
    assert stable_hash(DEFENSES.get("saferedir")().prepare_config()) == SAFEREDIR_PREPARE_HASH
    builtin = {e.name for e in DEFENSES.entries() if e.source == "builtin" and e.target
               and e.target.startswith("defenses.")}
    assert builtin <= set(DEFAULT_CONFIG_HASHES), f"record the config hash of {builtin - set(DEFAULT_CONFIG_HASHES)}"


def test_shipped_redirectors_still_match_the_default_training_options():
    from defenses.saferedir_io import SHIPPED_DIR, read_metadata

    expected = DEFENSES.get("saferedir")().prepare_config()
    shipped = sorted(SHIPPED_DIR.glob("*.safetensors"))
    assert shipped
    for path in shipped:
        assert read_metadata(path)["training"] == expected, path.name


@pytest.mark.parametrize("defense,option,value,allowed", BAD_VALUES,
                         ids=[f"{d}.{o}={v}" for d, o, v, _ in BAD_VALUES])
def test_bad_option_values_fail_naming_option_value_and_what_is_allowed(defense, option, value, allowed):
    cls = DEFENSES.get(defense)
    with pytest.raises(OptionError) as error:
        cls.validate_options({option: value})
    message = str(error.value)
    assert f"option {option}={value!r}" in message and allowed in message, message


def test_list_options_take_a_comma_separated_string():
    uce = DEFENSES.get("uce")(concepts="church, chapel", preserve="tree,")
    assert uce.options.concepts == ["church", "chapel"] and uce.options.preserve == ["tree"]
    assert DEFENSES.get("uce")().options.preserve is None  # None: the task's retention concepts


@pytest.mark.parametrize("name,option", [("negative-prompt", "text"), ("sld", "concept"), ("esd-x", "prompt"),
                                         ("esd-u", "prompt"), ("uce", "concepts"), ("keyword-filter", "words")])
def test_a_task_without_concept_words_is_refused_before_any_work(name, option):
    bare = dataclasses.replace(TOY, concept_words=())
    cls = DEFENSES.get(name)
    with pytest.raises(ConfigError, match=rf"{name}\.{option}"):
        cls().check_inputs(CheckContext("tiny-random", bare))
    cls(**{option: "a church"}).check_inputs(CheckContext("tiny-random", bare))
    cls().check_inputs(CheckContext("tiny-random", TOY))


def test_every_default_defense_passes_its_checks_on_the_shipped_tasks():
    for task in ("toy", "mini-unsafe", "mini-object", "mini-style"):
        model = "tiny-random" if task == "toy" else "sd-mini"
        for name in DEFAULT_CONFIG_HASHES:
            if not DEFENSES.get(name).runs_without_options:
                continue
            check = CheckContext(model, TASKS.get(task))
            if name == "filter" and model != "sd-mini":  # SD's safety checker, not on disk here: refused upfront
                with pytest.raises(UserError, match="safety checker"):
                    DEFENSES.get(name)().check_inputs(check)
                continue
            DEFENSES.get(name)().check_inputs(check)


# What prepare resolves with no option set (the module docstrings' defaults): the paper's on SD, the sd-mini
# preset on sd-mini. The presets are class-level data (benchmark.api.presets), read by preset_values.
RESOLVED = [
    ("esd-x", {"lr": 1e-5, "iterations": 1000, "ddim_steps": 50}, {"lr": 3e-4, "iterations": 200, "ddim_steps": 10}),
    ("esd-u", {"lr": 1e-5, "iterations": 1000, "ddim_steps": 50}, {"lr": 5e-5, "iterations": 200, "ddim_steps": 10}),
    ("uce", {"lamb": 0.1}, {"lamb": 30.0}),
    ("rece", {"lamb": 0.1, "epochs": 3, "reg": 0.1}, {"lamb": 30.0, "epochs": 3, "reg": 0.1}),
    ("mace", {"lamb": 1e3, "preserve_scale": 0.0, "lr": 1e-5, "steps": 50, "pooler": True},
     {"lamb": 30.0, "preserve_scale": 10.0, "lr": 1e-2, "steps": 120, "pooler": False}),
    ("safree", {"alpha": 0.01, "gamma": 10}, {"alpha": 0.01, "gamma": 10}),
    ("advunlearn", {"iterations": 1000, "lr": 1e-5, "attack_steps": 30, "attack_lr": 1e-3, "tokens": 1, "warmup": 200,
                    "ddim_steps": 50},
     {"iterations": 100, "lr": 3e-4, "attack_steps": 3, "attack_lr": 1e-2, "tokens": 3, "warmup": 20,
      "ddim_steps": 10}),
]


@pytest.mark.parametrize("name,paper,sd_mini", RESOLVED, ids=[r[0] for r in RESOLVED])
def test_prepare_resolves_the_documented_numbers_per_model(name, paper, sd_mini):
    defense = DEFENSES.get(name)()
    assert defense.preset_values("sd-1.4") == paper
    assert defense.preset_values("tiny-random") == paper  # only sd-mini has a preset of its own
    assert defense.preset_values("sd-mini") == sd_mini
    option, value = next(iter(paper)), 7
    assert DEFENSES.get(name)(**{option: value}).preset_values("sd-mini")[option] == value  # a set option wins


def test_what_prepare_computes_follows_the_presets():
    uce, rece, advunlearn = DEFENSES.get("uce")(), DEFENSES.get("rece")(), DEFENSES.get("advunlearn")()
    assert uce.edit_settings("sd-mini", 4) == {"lamb": 30.0, "erase_scale": 1.0, "preserve_scale": 0.25,
                                               "edit_keys": True}
    assert uce.edit_settings("sd-1.4", 0)["lamb"] == 0.1
    assert uce.edit_settings("sd-1.4", 0)["preserve_scale"] == 0.0  # no preserve set: no preserve term
    assert rece.resolved("sd-1.4", 20) == {"lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1, "edit_keys": True,
                                           "accumulate": False, "epochs": 3, "reg": 0.1}
    settings = advunlearn.settings("sd-mini")
    assert (settings.iterations, settings.tokens, settings.retain_weight) == (100, 3, 0.3)
    assert advunlearn.retain_prompts("sd-mini", TASKS.get("mini-object"), ["arrow"])[1].startswith("sd-mini")
    assert advunlearn.retain_prompts("tiny-random", TASKS.get("mini-object"), ["arrow"])[1] == "built-in list"


def test_only_sd_mini_draws_the_world():
    mace, filter_ = DEFENSES.get("mace")(), DEFENSES.get("filter")()
    assert mace.uses_world("sd-mini", TASKS.get("mini-object"))
    assert not mace.uses_world("tiny-random", TASKS.get("mini-object"))
    assert not DEFENSES.get("mace")(masks="attention").uses_world("sd-mini", TASKS.get("mini-object"))
    assert filter_.detector("sd-mini") == "mini-detector" and filter_.detector("sd-1.4") == "sd-safety-checker"


@pytest.mark.parametrize("name", ["esd-x", "uce", "rece", "mace", "safree", "advunlearn", "filter"])
def test_every_option_has_help_text_from_its_field_description(name):
    import pydantic

    cls = DEFENSES.get(name)
    described = pydantic.TypeAdapter(cls.Options).json_schema()["properties"]
    infos = cls.option_infos()
    assert infos and all(described[info.name].get("description") == info.help != "" for info in infos), \
        [info.name for info in infos if not described[info.name].get("description")]


ALLOWED_BENCHMARK = ("benchmark.api", "benchmark.hashing", "benchmark.store", "benchmark.mini_world")


@pytest.mark.parametrize("folder", ["attacks", "defenses"])
def test_builtins_import_only_the_core_api_and_their_helpers(folder):
    for path in sorted((REPO / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name == "benchmark" or name.startswith("benchmark."):
                    assert name.startswith(ALLOWED_BENCHMARK), f"{path.name} imports {name}"
                assert not name.startswith("reports"), f"{path.name} imports {name}"
