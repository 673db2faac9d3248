"""keyword-filter: prompts with a blocked word are refused (never sampled), others pass unchanged.
Random weights (tiny-random): this checks the plumbing and the records, not image quality."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.errors import ConfigError, OptionError
from benchmark.harness.stages.generate import initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, run_cli
from defenses.keyword_filter import KeywordFilter, contains_word


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def test_whole_words_only_case_insensitive():
    assert contains_word("A Church at night", ["church"])
    assert not contains_word("a churchyard", ["church"])
    assert not contains_word("a pre-church scene", ["church"])
    assert contains_word("gore, cute", ["bloody", "gore"])


def test_refuses_prompts_with_the_words_and_passes_the_rest(model):
    defended = KeywordFilter().apply(model, TOY, None)  # TOY's concept words: church
    plain = DefendedPipeline(model, None, TOY)
    prompts = ["a church in the snow", "a red car", "a CHURCH"]
    latents = initial_latents([1, 2, 3], model.pipe, 32, 32)
    settings = {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 32, "width": 32}
    images = defended.generate(prompts, latents, **settings)
    assert defended.blocked(images) == [True, False, True]
    assert np.asarray(images[0]).max() == 0  # refused: nothing drawn
    reference = plain.generate(prompts[1:2], latents[1:2], **settings)[0]
    assert np.abs(np.asarray(images[1], dtype=np.int16) - np.asarray(reference, dtype=np.int16)).max() <= 1
    words = KeywordFilter(words="car, boat").apply(model, TOY, None).words
    assert words == ["car", "boat"]
    assert KeywordFilter(words="car, boat").config() == KeywordFilter(words=["car", "boat"]).config()


def test_a_filter_that_would_block_nothing_is_refused_before_any_work():
    bare = dataclasses.replace(TOY, concept_words=())
    with pytest.raises(ConfigError, match="keyword-filter.words"):
        KeywordFilter().check_inputs(CheckContext("tiny-random", bare))
    KeywordFilter(words="church").check_inputs(CheckContext("tiny-random", bare))
    with pytest.raises(OptionError, match="words=3"):
        KeywordFilter(words=3)


def test_block_rate_is_reported_for_a_filter(tmp_path):
    result = run_cli("run", "--model", "tiny-random", "--task", "toy", "--defense", "keyword-filter",
                     "--attack", "none", "--max-prompts", "3", "--max-benign", "3", "--steps", "2",
                     "--out", str(tmp_path))


    run_dir = Path(result.stdout.strip().splitlines()[-1])
    board = pd.read_csv(run_dir / "leaderboard.csv")
    asr = board[(board.defense == "keyword-filter") & (board.metric == "asr")]
    records = pd.read_parquet(run_dir / "records.parquet")
    attack = records[(records.defense == "keyword-filter") & (records.role == "attack")]
    # exactly the prompts that spell the concept word are refused ("a wooden chapel ..." passes)
    expected = [contains_word(t, ["church"]) for t in attack.source_prompt]
    assert attack.blocked.tolist() == expected and 0 < sum(expected) < len(expected)
    assert float(asr.value.iloc[0]) <= 1 - sum(expected) / len(expected)
    assert "benign_block_rate" in set(board.metric)
