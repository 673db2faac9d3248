"""The contracts of every registered defense, attack and judge (benchmark/harness/contracts.py), driven by the
registry: a new built-in is checked without editing this file (it runs with its defaults unless a faster
budget is listed below). On sd-mini with tiny budgets: plumbing and consistency, not quality."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from benchmark.api.attack import AttackContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS, TASKS
from benchmark.harness.contracts import check_attack, check_defense, check_judge, pipeline_fingerprint

# Small budgets so that each contract takes seconds; the contracts themselves do not depend on budgets.
FAST_DEFENSES = {
    "esd-x": {"iterations": 2, "ddim_steps": 3},
    "esd-u": {"iterations": 2, "ddim_steps": 3},
    "rece": {"epochs": 1},
    "safree": {"calibration_pairs": 4},
    "mace": {"steps": 2, "images": 2, "prompts": 4},
    "advunlearn": {"iterations": 2, "warmup": 1, "attack_steps": 1, "ddim_steps": 2, "pool": 1, "retain_prompts": 2,
                   "retain_batch": 1},
}
NEEDS_USER_DATA = {"checkpoint"}  # covered by tests/test_defenses_checkpoint.py with a written state dict
FAST_ATTACKS = {
    "paraphrase": {"candidates": 6},
    "ring-a-bell": {"preset": "mini", "population": 4, "generations": 1, "tokens": 3},
    "unlearndiff": {"preset": "mini", "iterations": 2, "check_every": 1},
    "p4d": {"preset": "mini", "iterations": 2, "check_every": 1},
    "switch-aware": {"preset": "mini", "iterations": 2, "check_every": 1},
    "prompt-set": {"set": "mini-object-attack"},
    "concept-inversion": {"preset": "mini", "steps": 2, "images": 2, "batch_size": 2},
    "mma-diffusion": {"preset": "mini", "steps": 2, "candidates": 4, "tokens": 3},
}
JUDGE_OPTIONS = {
    "clip-score": {"model": "tiny-random"},
    "clip-zero-shot": {"model": "tiny-random"},
    "mini-detector": {"label": "object:arrow"},
}


@pytest.fixture(scope="module")
def task():
    return TASKS.get("mini-object")


@pytest.mark.parametrize("name", DEFENSES.builtin_names())
def test_defense_contract(sd_mini, task, name):
    if name in NEEDS_USER_DATA:
        pytest.skip(f"{name} needs a user checkpoint (tested in its own module)")
    report = check_defense(name, sd_mini, task, FAST_DEFENSES.get(name), prompts=("a red arrow", "a blue circle", "a green star"))
    assert "close() restores the pipeline" in report.checks


@pytest.mark.parametrize("name", ATTACKS.builtin_names())
def test_attack_contract(sd_mini, task, name):
    judge = JUDGES.get("mini-detector")(device="cpu", label="object:arrow")
    ctx = AttackContext(model=sd_mini, defended=DefendedPipeline(sd_mini, None, task), task=task, judge=judge,
                        sampler={"num_inference_steps": 4, "guidance_scale": 5.0, "height": 64, "width": 64,
                                 "seed": 0})
    prompts = PROMPT_SETS.get("mini-object-attack").load(None, limit=3)
    report = check_attack(name, ctx, prompts, FAST_ATTACKS.get(name))
    assert "same result alone as in a batch" in report.checks


@pytest.mark.parametrize("name", JUDGES.builtin_names())
def test_judge_contract(name):
    generator = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 64, 3, generator=generator) * 255).byte().numpy()) for _ in range(3)]
    report = check_judge(name, images, ["a red arrow", "a blue circle", "a green star"], JUDGE_OPTIONS.get(name))
    assert "batched equals one at a time" in report.checks


def test_fingerprint_sees_an_edit(sd_mini):
    before = pipeline_fingerprint(sd_mini.pipe)
    weight = next(sd_mini.pipe.unet.parameters())
    with torch.no_grad():
        weight.add_(1.0)
        assert pipeline_fingerprint(sd_mini.pipe)["unet"] != before["unet"]
        weight.sub_(1.0)
    assert pipeline_fingerprint(sd_mini.pipe)["unet"] == before["unet"]


def test_the_defense_contract_catches_a_white_box_path_that_is_not_the_sampler(sd_mini, task):
    """A defense whose sampler adds a negative prompt but whose noise_prediction ignores it must fail."""
    from benchmark.api import DEFENSES, Defense, DefenseKind
    from benchmark.harness.contracts import ContractViolation

    class Inconsistent(DefendedPipeline):
        def call_kwargs(self, batch_size):
            return {"negative_prompt": ["a red arrow"] * batch_size}

    @DEFENSES.register("contract-probe-inconsistent")
    class Probe(Defense):
        """A defense that breaks the noise_prediction contract."""

        kind = DefenseKind.INFERENCE_TIME

        def apply(self, model, task, artifact_dir):
            return Inconsistent(model, self, task)

    with pytest.raises(ContractViolation, match="noise_prediction give images"):
        check_defense("contract-probe-inconsistent", sd_mini, task, prompts=("a blue circle", "a red arrow"))


def test_the_defense_contract_catches_a_close_that_does_not_restore(sd_mini, task):
    from benchmark.api import DEFENSES, Defense, DefenseKind
    from benchmark.harness.contracts import ContractViolation

    class Leaky(DefendedPipeline):
        def __init__(self, *args):
            super().__init__(*args)
            with torch.no_grad():
                next(self.pipe.text_encoder.parameters()).mul_(1.0001)

    @DEFENSES.register("contract-probe-leaky")
    class Probe(Defense):
        """A weight edit that forgets to undo itself."""

        kind = DefenseKind.WEIGHT_EDIT

        def apply(self, model, task, artifact_dir):
            return Leaky(model, self, task)

    weight = next(sd_mini.pipe.text_encoder.parameters())
    original = weight.detach().clone()
    try:
        with pytest.raises(ContractViolation, match="did not restore"):
            check_defense("contract-probe-leaky", sd_mini, task, prompts=("a blue circle", "a green star"))
    finally:
        with torch.no_grad():
            weight.copy_(original)
