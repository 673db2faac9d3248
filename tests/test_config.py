import json
import subprocess
import sys

import pytest

from benchmark.cli import build_parser, config_from_args
from benchmark.config import ConfigError, RunConfig, SamplerConfig, config_from_mapping, parse_option
from benchmark.hashing import canonical_json, stable_hash
from benchmark.resolve import resolve, run_id
from conftest import REPO


def test_hash_is_order_and_float_stable():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"g": 7.0}) == stable_hash({"g": 7})
    assert stable_hash({"g": 7.5}) != stable_hash({"g": 7.25})
    assert canonical_json({"x": (1, 2)}) == '{"x":[1,2]}'


def test_paths_never_enter_keys(tmp_path):
    with pytest.raises(TypeError, match="paths must not enter cell keys"):
        stable_hash({"p": tmp_path})


def test_same_config_same_key_in_another_process():
    config = RunConfig(model="tiny-random", tasks=["toy"], defenses=["none", "negative-prompt"],
                       sampler=SamplerConfig(num_inference_steps=3, guidance_scale=5.5))
    here = stable_hash(config.to_dict())
    code = ("from benchmark.config import RunConfig, SamplerConfig; from benchmark.hashing import stable_hash;"
            "c = RunConfig(model='tiny-random', tasks=['toy'], defenses=['none', 'negative-prompt'],"
            " sampler=SamplerConfig(num_inference_steps=3, guidance_scale=5.5)); print(stable_hash(c.to_dict()))")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert other == here


def test_cli_flags_and_suite_file_give_the_same_config(tmp_path):
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "model: tiny-random\ntasks: [toy]\ndefenses: [negative-prompt]\nattacks: [none]\nmax_prompts: 2\n"
        "sampler:\n  num_inference_steps: 3\n  batch_size: 2\n"
        "defense_options:\n  negative-prompt:\n    text: church, chapel\n"
    )
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'model = "tiny-random"\ntasks = ["toy"]\ndefenses = ["negative-prompt"]\nattacks = ["none"]\n'
        'max_prompts = 2\n[sampler]\nnum_inference_steps = 3\nbatch_size = 2\n'
        '[defense_options.negative-prompt]\ntext = "church, chapel"\n'
    )
    parser = build_parser()
    from_flags = config_from_args(parser.parse_args([
        "run", "--model", "tiny-random", "--task", "toy", "--defense", "negative-prompt", "--attack", "none",
        "--max-prompts", "2", "--steps", "3", "--batch-size", "2",
        "--option", "defense:negative-prompt.text=church, chapel"]))
    from_yaml = config_from_args(parser.parse_args(["run", "--suite", str(suite)]))
    from_toml = config_from_args(parser.parse_args(["run", "--suite", str(toml)]))
    assert from_yaml.name == "mine" and from_toml.name == "mine"  # run directories named after the suite
    from_flags.name = "mine"
    assert from_flags == from_yaml == from_toml
    resolved = [resolve(c).config for c in (from_flags, from_yaml, from_toml)]
    assert len({run_id(c) for c in resolved}) == 1 and run_id(resolved[0]).startswith("mine-")
    # Flags override the suite.
    overridden = config_from_args(parser.parse_args(["run", "--suite", str(suite), "--steps", "5"]))
    assert overridden.sampler.num_inference_steps == 5 and overridden.sampler.batch_size == 2


def test_resolve_expands_all_and_keeps_none_first():
    config = resolve(RunConfig(model="tiny-random", defenses=["all"], attacks=["none"])).config
    assert config.defenses[0] == "none" and "negative-prompt" in config.defenses
    config = resolve(RunConfig(model="tiny-random", defenses=["negative-prompt"])).config
    assert config.defenses == ["none", "negative-prompt"]
    assert config.tasks == ["toy"]
    assert config.sampler.num_inference_steps == 4 and config.sampler.height == 32
    assert config.device == "cpu" and config.dtype == "fp32"


def test_batch_size_does_not_change_the_run_id_but_steps_do():
    base = resolve(RunConfig(model="tiny-random")).config
    batched = resolve(RunConfig(model="tiny-random", sampler=SamplerConfig(batch_size=2))).config
    assert run_id(base) == run_id(batched)
    other = resolve(RunConfig(model="tiny-random", sampler=SamplerConfig(num_inference_steps=9))).config
    assert run_id(base) != run_id(other)


def test_bad_config_messages():
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_mapping({"modle": "x"})
    with pytest.raises(ConfigError, match="unknown sampler key"):
        config_from_mapping({"sampler": {"stepz": 3}})
    with pytest.raises(ConfigError, match="images_per_prompt"):
        config_from_mapping({"sampler": {"images_per_prompt": 0}}).validate()
    with pytest.raises(ConfigError, match="KIND:NAME.KEY=VALUE"):
        parse_option("nonsense")
    assert parse_option("attack:prompt-set.set=mma") == ("attack", "prompt-set", "set", "mma")
    assert parse_option("defense:x.scale=2.5")[3] == 2.5


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    config = resolve(RunConfig(model="tiny-random")).config
    again = config_from_mapping(yaml.safe_load(config.to_yaml()))
    assert again == config
    json.dumps(config.to_dict())


def test_prompts_take_a_registered_set_by_name_or_a_file():
    from benchmark.resolve import replaced_set, resolve
    from benchmark.runner import load_prompts

    assert replaced_set("mini-unsafe-attack") == "mini-unsafe-attack" and replaced_set("nope.csv") is None
    resolve(RunConfig(model="sd-mini", tasks=["mini-object"], prompts="mini-unsafe-attack"))  # a set: fine
    with pytest.raises(ConfigError, match="no such file or registered prompt set"):
        resolve(RunConfig(model="sd-mini", tasks=["mini-object"], prompts="mini-unsafe-atack"))
    name, prompts = load_prompts("mini-object-attack", "mini-unsafe-attack", None, 3, None, [])
    assert name == "mini-unsafe-attack" and len(prompts) == 3
