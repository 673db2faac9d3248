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
