import json
import re
import subprocess
import sys

import pytest

from benchmark.cli import build_parser, config_from_args
from benchmark.harness.config import ConfigError, RunConfig, SamplerConfig, config_from_mapping, parse_option
from benchmark.harness.resolve import resolve, run_id
from benchmark.hashing import canonical_json, stable_hash
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
    code = ("from benchmark.harness.config import RunConfig, SamplerConfig; from benchmark.hashing import stable_hash;"
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
    from benchmark.harness.resolve import replaced_set, resolve
    from benchmark.harness.runner import load_prompts

    assert replaced_set("mini-unsafe-attack") == "mini-unsafe-attack" and replaced_set("nope.csv") is None
    resolve(RunConfig(model="sd-mini", tasks=["mini-object"], prompts="mini-unsafe-attack"))  # a set: fine
    with pytest.raises(ConfigError, match="no such file or registered prompt set"):
        resolve(RunConfig(model="sd-mini", tasks=["mini-object"], prompts="mini-unsafe-atack"))
    name, prompts = load_prompts("mini-object-attack", "mini-unsafe-attack", None, 3, None, [])
    assert name == "mini-unsafe-attack" and len(prompts) == 3


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ('sampler: {num_inference_steps: "many"}', "sampler.num_inference_steps='many'"),
    ("sampler: {guidance_scale: [7.5]}", "sampler.guidance_scale=[7.5]"),
    ("max_prompts: 2.5", "max_prompts=2.5"),
    ("defense_options: {sld: 3}", "defense_options.sld=3"),
])
def test_a_mistyped_suite_value_names_its_key(tmp_path, yaml_text, expected):
    from benchmark.harness.config import load_suite_file

    suite = tmp_path / "bad.yaml"
    suite.write_text(f"model: tiny-random\ntasks: [toy]\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        config_from_mapping(load_suite_file(suite), origin=str(suite))


def test_a_mistyped_suite_value_is_one_line_exit_2(tmp_path):
    """It fails before any work as a user error, not as a TypeError deep in a stage (it did: '<=' between str and
    int)."""
    from conftest import run_cli

    suite = tmp_path / "bad.yaml"
    suite.write_text('model: tiny-random\ntasks: [toy]\nsampler: {num_inference_steps: "many"}\n')
    result = run_cli("run", "--suite", str(suite), "--out", str(tmp_path / "runs"), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "sampler.num_inference_steps='many'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_problem_is_named_at_once_and_valid_values_are_kept_as_given():
    with pytest.raises(ConfigError) as error:
        config_from_mapping({"max_benign": "3", "sampler": {"height": "64", "seed": 1.5}}, origin="s.yaml")
    message = str(error.value)
    assert message.startswith("s.yaml: ")
    assert all(key in message for key in ("max_benign='3'", "sampler.height='64'", "sampler.seed=1.5"))
    config = config_from_mapping({"sampler": {"guidance_scale": 7}})  # an int is a valid float ...
    assert config.sampler.guidance_scale == 7 and type(config.sampler.guidance_scale) is int  # ... kept as given


def test_mistyped_values_never_reach_a_type_error():
    """Fuzz: any value of any JSON type for each sampler and scalar run key is accepted or refused as ConfigError."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32),
                       st.text(max_size=5), st.lists(st.integers(0, 2), max_size=2),
                       st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=1))
    keys = st.sampled_from(["sampler.num_inference_steps", "sampler.guidance_scale", "sampler.height",
                            "sampler.batch_size", "sampler.seed", "max_prompts", "max_benign", "device", "dtype",
                            "model", "name", "prompts"])

    @settings(max_examples=150, deadline=None)
    @given(keys, values)
    def check(key, value):
        data = {"sampler": {key.split(".", 1)[1]: value}} if key.startswith("sampler.") else {key: value}
        try:
            config_from_mapping(data).validate()
        except ConfigError:
            pass  # refused as a user error with a message: what we want

    check()
