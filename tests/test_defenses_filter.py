"""The post-hoc ``filter``: on sd-mini it blocks exactly the images the world's detector flags (checked on
rendered ground truth, so the expected answer is known), passes the rest, and on SD models without the
safety checker's weights it stops with a message saying how to provide them."""

from __future__ import annotations

import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.errors import ConfigError, OptionError
from benchmark.api.model import LoadedModel, SamplerDefaults
from benchmark.api.registry import TASKS
from benchmark.mini_world.world import render_scene, to_pil
from conftest import TOY
from defenses.filter import Filter, SafetyCheckerMissingError


def fake_model(name: str) -> LoadedModel:
    """Only the name and device matter to the filter; no pipeline is loaded."""
    return LoadedModel(name, name, None, torch.device("cpu"), torch.float32, SamplerDefaults())


def test_mini_filter_blocks_rendered_gore_and_passes_clean_scenes():
    gore = [to_pil(render_scene(seed, gore=True)[0]) for seed in range(6)]
    clean = [to_pil(render_scene(seed, gore=False)[0]) for seed in range(6, 12)]
    defended = Filter().apply(fake_model("sd-mini"), TASKS.get("mini-unsafe"), None)
    assert defended.blocked(gore) == [True] * 6
    assert defended.blocked(clean) == [False] * 6
    never = Filter(threshold=1.01).apply(fake_model("sd-mini"), TASKS.get("mini-unsafe"), None)
    assert never.blocked(gore) == [False] * 6


def test_mini_filter_uses_the_tasks_label():
    from benchmark.mini_world.tasks import OBJECT_CONCEPT

    erased = [to_pil(render_scene(seed, object=OBJECT_CONCEPT, gore=False)[0]) for seed in range(4)]
    stars = [to_pil(render_scene(seed, object="star", gore=False)[0]) for seed in range(4)]
    defended = Filter().apply(fake_model("sd-mini"), TASKS.get("mini-object"), None)
    assert defended.blocked(erased) == [True] * 4 and defended.blocked(stars) == [False] * 4


def test_bad_label_and_detector_are_clear_errors():
    with pytest.raises(ConfigError, match="labels"):
        Filter(label="object:unicorn").apply(fake_model("sd-mini"), TASKS.get("mini-object"), None)
    with pytest.raises(OptionError, match="detector='nsfw-magic'.*sd-safety-checker"):
        Filter(detector="nsfw-magic")
    with pytest.raises(OptionError, match="threshold=2"):
        Filter(threshold=2)


def test_the_label_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="no label 'object:unicorn'.*object:arrow"):
        Filter(label="object:unicorn").check_inputs(CheckContext("sd-mini", TASKS.get("mini-object")))
    with pytest.raises(ConfigError, match="names no mini-detector label"):  # toy's judge (NudeNet) has none
        Filter(detector="mini-detector").check_inputs(CheckContext("tiny-random", TOY))
    Filter().check_inputs(CheckContext("sd-mini", TASKS.get("mini-unsafe")))



def test_a_missing_safety_checker_fails_before_any_work(tmp_path):
    """SD models: the checker must be a local folder or in the hub cache when the run is checked (resolve's dry
    run), not when the defense is applied after an hour of other defenses. It needs no label."""
    with pytest.raises(SafetyCheckerMissingError, match="huggingface-cli download.*defense:filter.checker"):
        Filter(checker="nobody/no-such-safety-checker").check_inputs(CheckContext("sd-1.4", TOY))
    (tmp_path / "preprocessor_config.json").write_text("{}")
    Filter(checker=str(tmp_path)).check_inputs(CheckContext("sd-1.4", TOY))


def test_sd_safety_checker_offline_without_weights_says_how_to_get_them():
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        Filter(checker="nobody/no-such-safety-checker").apply(fake_model("sd-1.4"), TOY, None)
