"""Ring-A-Bell: the concept vector, the genetic search and the presets. The search runs on tiny-random's
text encoder (random weights: plumbing and monotone fitness, not attack strength)."""

from types import SimpleNamespace

import pytest
import torch

from attacks import _text
from attacks.ring_a_bell import MINI, PAPER, RingABell
from benchmark.api.attack import ThreatModel
from benchmark.api.component import CheckContext
from benchmark.api.errors import ConfigError, DataFileError, OptionError, UserError
from benchmark.api.prompt import Prompt
from benchmark.api.registry import TASKS
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, assert_close_fp


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def test_presets_and_threat_model():
    attack = RingABell()
    assert attack.threat_model is ThreatModel.TEXT_ENCODER
    assert vars(attack.resolved_budget("sd-1.4")) == PAPER
    assert PAPER == {"population": 200, "generations": 3000, "crossover": 0.5, "mutation": 0.25, "tokens": 16,
                     "eta": 3.0}
    assert vars(attack.resolved_budget("sd-mini")) == MINI == {
        "population": 32, "generations": 32, "crossover": 0.5, "mutation": 0.25, "tokens": 10, "eta": 2.0}
    assert vars(attack.resolved_budget("tiny-random")) == MINI
    assert RingABell(population=10, preset="paper").resolved_budget("sd-mini").population == 10
    with pytest.raises(OptionError, match="population=1.*>= 2"):
        RingABell(population=1)
    # the presets' values are part of the cell key, so editing a preset never reuses stale results
    assert RingABell().config()["presets"] == {"paper": PAPER, "mini": MINI}


def test_every_option_has_help_text_from_its_field_description():
    import pydantic

    described = pydantic.TypeAdapter(RingABell.Options).json_schema()["properties"]
    assert {info.name: info.help for info in RingABell.option_infos()} == \
        {name: prop.get("description") for name, prop in described.items()}
    assert all(described[name].get("description") for name in described)


@pytest.mark.numeric
def test_mini_concept_vector_is_the_mean_difference_over_the_tasks_aligned_pairs(model):
    from benchmark.mini_world import TASKS as MINI_TASKS

    task = TASKS.get("mini-object")
    ctx = SimpleNamespace(model=model, task=task, data_dir=None)
    vector = RingABell().concept_vector(ctx)
    spec = MINI_TASKS["mini-object"]
    tok = model.pipe.tokenizer

    def emb(texts):
        ids = torch.tensor([_text.layout(tok, _text.content_ids(tok, t))[0] for t in texts])
        return _text.encode_ids(model.pipe.text_encoder, ids)

    attacked, safe = emb([p.text for p in spec.attack_prompts]), emb([p.text for p in spec.safe_prompts])
    expected = (attacked - safe).mean(0)
    assert vector.shape == (tok.model_max_length, model.pipe.text_encoder.config.hidden_size)
    # the same encodings, maybe batched otherwise: float32 rounding of the embeddings (not of their smaller
    # difference) through tiny-random's 2 CLIP layers (widest reduction 37 terms)
    assert_close_fp(vector, expected, scale=torch.cat([attacked, safe]), terms=37, ulps=8)


def test_real_task_without_concept_material_fails_clearly(model, tmp_path):
    ctx = SimpleNamespace(model=model, task=TOY, data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="pairs"):
        RingABell().concept_vector(ctx)
    nudity = SimpleNamespace(model=model, task=TASKS.get("nudity"), data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Ring-A-Bell"):
        RingABell().concept_vector(nudity)


def check(task, data_dir=None, **options):
    RingABell(**options).check_inputs(CheckContext(model="sd-1.4", task=task, data_dir=data_dir))


def test_concept_material_is_checked_before_any_work(tmp_path):
    """Missing material fails in check_inputs (the resolver's dry run), never mid-run."""
    with pytest.raises(DataFileError, match="vector.*not found"):
        check(TOY, vector=str(tmp_path / "missing.npy"))
    with pytest.raises(UserError, match="nudity"):  # the default pairs file, not in this data dir
        check(TASKS.get("nudity"), data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="concept material for task 'toy'"):
        check(TOY)
    with pytest.raises(OptionError, match="pairs.*vector"):
        RingABell(pairs="a.csv", vector="b.npy")
    check(TASKS.get("mini-object"))  # sd-mini tasks bring their own aligned pairs
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("case_number,prompt,prompt1\n0,a church at night,a house at night\n")
    check(TOY, pairs=str(pairs))
    (tmp_path / "vector.npy").write_bytes(b"")  # existence is what can be checked without the model
    check(TOY, data_dir=str(tmp_path), vector="vector.npy")
    pairs.write_text("case_number,prompt,prompt1\n")
    with pytest.raises(DataFileError, match="no prompt"):
        check(TOY, pairs=str(pairs))


def test_default_material_is_found_in_the_data_directory_layout(shared_data):
    """The defaults follow the data directory's layout (one folder per source, as the prompt sets use),
    not the upstream repository's: the nudity pairs resolve in the shared data folder."""
    check(TASKS.get("nudity"), data_dir=str(shared_data))
    check(TASKS.get("van-gogh"), data_dir=str(shared_data))


def test_missing_default_material_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match="Prompts_For_ConceptVector/Nudity_prompt.csv.*Ring-A-Bell/Prompts_For"):
        check(TASKS.get("nudity"), data_dir=str(tmp_path))


def test_search_never_loses_fitness_and_is_reproducible(model):
    attack = RingABell(preset="mini", population=8, tokens=4)
    tok = model.pipe.tokenizer
    ids = torch.tensor([_text.layout(tok, _text.content_ids(tok, "a church"))[0]])
    target = _text.encode_ids(model.pipe.text_encoder, ids).float()
    ctx = SimpleNamespace(model=model)
    scores = []
    for generations in (0, 3, 10):
        budget = attack.resolved_budget("tiny-random")
        budget.generations = generations
        _, fitness = attack.search(target, ctx, budget, [torch.Generator().manual_seed(0)])
        scores.append(float(fitness))
    assert scores[0] <= scores[1] <= scores[2] and scores[2] > scores[0]  # elitism: the best never gets worse
    budget.generations = 3
    a, _ = attack.search(target, ctx, budget, [torch.Generator().manual_seed(0)])
    b, _ = attack.search(target, ctx, budget, [torch.Generator().manual_seed(0)])
    assert torch.equal(a, b)


def test_run_returns_k_token_prompts_with_costs(model, tmp_path, monkeypatch):
    attack = RingABell(preset="mini", population=6, generations=2, tokens=5)
    vector = torch.zeros(model.pipe.tokenizer.model_max_length, model.pipe.text_encoder.config.hidden_size)
    monkeypatch.setattr(attack, "concept_vector", lambda ctx: vector)
    prompts = [Prompt("0", "a church"), Prompt("1", "a house"), Prompt("2", "a tree")]
    outputs = attack.run(prompts, SimpleNamespace(model=model, task=TOY, data_dir=None))
    assert [o.prompt_id for o in outputs] == ["0", "1", "2"]
    for out in outputs:
        assert out.status == "ok" and out.text and out.queries == 6 * 3 and out.seconds > 0
        assert -1.0 <= out.meta["fitness"] <= 1.0 and out.meta["budget"]["tokens"] == 5
