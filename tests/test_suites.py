"""Suite files with ``include:``: a suite name or a relative path, the including file's keys on top (mappings
merged at every depth), and one-line errors for a cycle or a missing include."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.api.errors import ConfigError
from benchmark.harness.config import load_suite_file
from benchmark.suites import deep_merge, read_suite


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_an_included_file_is_the_base_and_the_including_keys_win(tmp_path):
    _write(tmp_path, "_base.yaml", "description: base\nmodel: tiny-random\ntasks: [toy]\nmax_prompts: 4\n"
                                   "sampler: {num_inference_steps: 4, batch_size: 4}\n"
                                   "attack_options:\n  ring-a-bell: {preset: paper, tokens: 77}\n")
    suite = _write(tmp_path, "mine.yaml", "include: _base.yaml\ndescription: mine\nmax_prompts: 2\n"
                                          "sampler: {batch_size: 2}\nattack_options:\n  ring-a-bell: {tokens: 16}\n")
    data = load_suite_file(suite)
    assert data == {"model": "tiny-random", "tasks": ["toy"], "max_prompts": 2,
                    "sampler": {"num_inference_steps": 4, "batch_size": 2},
                    "attack_options": {"ring-a-bell": {"preset": "paper", "tokens": 16}}}
    assert list(data) == ["model", "tasks", "max_prompts", "sampler", "attack_options"]  # the base's layout
    assert read_suite(suite)["description"] == "mine"


def test_lists_are_replaced_not_merged():
    merged = deep_merge({"tasks": ["a", "b"], "source": {"protocol": {"seeds": [1, 2], "model": "x"}}},
                       {"tasks": ["c"], "source": {"protocol": {"seeds": [3]}}})
    assert merged == {"tasks": ["c"], "source": {"protocol": {"seeds": [3], "model": "x"}}}


def test_include_by_suite_name_and_a_list_of_includes(tmp_path):
    _write(tmp_path, "_steps.yaml", "sampler: {num_inference_steps: 2}\nmax_prompts: 3\n")
    suite = _write(tmp_path, "mine.yaml", "include: [smoke, _steps.yaml]\nmax_benign: 1\n")
    data = load_suite_file(suite)
    smoke = load_suite_file(Path(__file__).resolve().parents[1] / "benchmark" / "suites" / "smoke.yaml")
    assert data["model"] == smoke["model"] and data["defenses"] == smoke["defenses"]
    assert data["sampler"] == {**smoke["sampler"], "num_inference_steps": 2}  # the later include wins
    assert (data["max_prompts"], data["max_benign"]) == (3, 1)


def test_an_include_cycle_is_a_one_line_error(tmp_path):
    _write(tmp_path, "a.yaml", "include: b.yaml\nmodel: tiny-random\n")
    _write(tmp_path, "b.yaml", "include: a.yaml\ntasks: [toy]\n")
    with pytest.raises(ConfigError, match=r"include cycle a\.yaml -> b\.yaml -> a\.yaml; remove one") as error:
        load_suite_file(tmp_path / "a.yaml")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("include", "expected"), [
    ("_nowhere.yaml", r"included file .*_nowhere\.yaml does not exist; fix the path"),
    ("no-such-suite", r"included suite 'no-such-suite' does not exist; name one of `python -m benchmark list"),
    ("[1]", r"include must be a suite name or a relative path, got 1"),
])
def test_a_missing_include_says_what_to_do(tmp_path, include, expected):
    suite = _write(tmp_path, "mine.yaml", f"include: {include}\nmodel: tiny-random\n")
    with pytest.raises(ConfigError, match=expected) as error:
        load_suite_file(suite)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tokens", [77, 38, 16])
def test_the_ring_a_bell_suites_differ_only_in_k(tokens):
    from reports.published import suite_source

    name = f"paper-ringabell-nudity-k{tokens}"
    data = load_suite_file(Path(__file__).resolve().parents[1] / "benchmark" / "suites" / f"{name}.yaml")
    assert data["attack_options"] == {"ring-a-bell": {"preset": "paper", "tokens": tokens}}
    assert data["model"] == "sd-1.4" and data["judge_options"] == {"nudenet": {"preset": "unlearndiff"}}
    source = suite_source(name)  # published.py reads the included source block too
    assert source["table"].startswith(f"Table 1 (nudity, K={tokens})")
    assert source["protocol"]["attack_options"] == {"ring-a-bell": {"tokens": tokens}}
    assert source["protocol"]["judge"] == "nudenet" and source["arxiv"] == "2310.10012"
