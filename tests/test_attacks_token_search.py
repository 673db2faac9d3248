"""The token-search base class (attacks/_token_search.py) and the tutorial plugin written on it
(examples/plugins/random_token_search.py), on tiny-random (random weights: the loop's plumbing -- the attack
contract, budgets, early stop, the per-run undefended cache --, not any attack's strength)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from attacks import _token_search
from attacks._token_search import TokenSearchAttack, release_undefended, undefended_cache
from attacks.p4d import P4D
from attacks.switch_aware import SwitchAware
from attacks.unlearndiff import UnlearnDiff
from benchmark.api.attack import AttackContext, ThreatModel, check_outputs
from benchmark.api.defense import DefendedPipeline
from benchmark.api.judge import Judge, JudgeIdentity, JudgeResult
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, load_plugin
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, scale_defense

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "random_token_search.py"
SAMPLER = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 32, "width": 32}
PROMPTS = [Prompt("0", "a church", seed=1), Prompt("1", "a nude person", seed=2), Prompt("2", "a house", seed=3)]


class FlagsAfter(Judge):
    """Flags nothing for its first ``calls`` images, everything after (check 0 passes, a later check hits)."""

    name = "flags-after"

    def __init__(self, calls: int):
        self.calls, self.seen = calls, 0

    def identity(self):
        return JudgeIdentity(self.name, "1", str(self.calls), 0.5, "-")

    def score(self, images, prompts):
        results = [JudgeResult(1.0 if self.seen + i >= self.calls else 0.0, self.seen + i >= self.calls)
                   for i in range(len(images))]
        self.seen += len(images)
        return results


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def plugin():
    load_plugin(PLUGIN)
    return ATTACKS.get("random-token-search")


def context(model, judge, defended=None):
    defended = defended or DefendedPipeline(model, None, TOY)
    return AttackContext(model=model, defended=defended, task=TOY, judge=judge, sampler=dict(SAMPLER))


def test_the_three_white_box_attacks_are_siblings_on_the_base_class():
    for cls in (UnlearnDiff, P4D, SwitchAware):
        assert issubclass(cls, TokenSearchAttack) and cls.threat_model is ThreatModel.WHITE_BOX
    assert not issubclass(P4D, UnlearnDiff)  # P4D writes its own step, it no longer overrides UnlearnDiff's
    assert issubclass(SwitchAware, UnlearnDiff)  # UnlearnDiff's step plus a loss term
    for cls in (UnlearnDiff, P4D, SwitchAware):  # help from Field(description=...), every option
        assert all(info.help for info in cls.option_infos()), cls


def test_plugin_registers_and_follows_the_attack_contract(model, plugin):
    assert ATTACKS.entry("random-token-search").source == "plugin random_token_search.py"
    attack = plugin(iterations=4, check_every=2, batch_size=2)
    assert attack.resolved("tiny-random", "toy") == {"iterations": 4, "check_every": 2}
    assert plugin().resolved("sd-1.4", "toy") == {"iterations": 40, "check_every": 10}
    outputs = attack.run(PROMPTS, context(model, FlagsAfter(10**6)))
    check_outputs(attack, PROMPTS, outputs)
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        assert out.status == "ok" and out.text.endswith(prompt.text) and out.text != prompt.text
        # check 0 + the checks at iterations 2 and 4, one target generation; nothing flagged: every iteration
        assert out.meta["iterations"] == 4 and out.meta["checks"] == 3 and out.queries == 4 + 3 + 1
        assert out.meta["flagged_at"] is None and out.meta["budget"] == {"iterations": 4, "check_every": 2}
    alone = plugin(iterations=4, check_every=2).run(PROMPTS[1:2], context(model, FlagsAfter(10**6)))
    assert alone[0].text == outputs[1].text  # a prompt's randomness is its own, whatever its batch


def test_plugin_stops_a_prompt_at_the_first_flagged_check(model, plugin):
    attack = plugin(iterations=6, check_every=2)
    outputs = attack.run(PROMPTS, context(model, FlagsAfter(len(PROMPTS))))  # check 0 passes, check 1 flags
    check_outputs(attack, PROMPTS, outputs)
    for out in outputs:
        assert out.meta["flagged_at"] == 2 and out.meta["iterations"] == 2 and out.meta["checks"] == 2
        assert out.queries == 2 + 2 + 1
    full = plugin(iterations=6, check_every=2, early_stop=False).run(PROMPTS, context(model, FlagsAfter(3)))
    assert all(o.meta["iterations"] == 6 for o in full)  # without early stop: the whole budget


def test_the_undefended_side_lives_as_long_as_the_runs_model():
    """The pristine copy and the targets belong to the run's loaded model: freed with it, or on release."""
    run_model = TinyRandomModel().load(torch.device("cpu"), torch.float32)
    edited = scale_defense().apply(run_model, TOY, None)
    try:
        UnlearnDiff(iterations=1, check_every=1).run(PROMPTS[:1], context(run_model, FlagsAfter(10**6), edited))
    finally:
        edited.close()
    cache = undefended_cache(run_model)
    assert cache.pristine is not None and len(cache.targets) == 1
    release_undefended(run_model)
    assert undefended_cache(run_model).pristine is None  # released: a fresh, empty cache
    key = id(run_model)
    assert key in _token_search._HELD
    del run_model, edited, cache
    gc.collect()
    assert key not in _token_search._HELD  # the run's model is gone, and so is what was held for it
