"""`--attack all` expands to every registered attack that runs without user data, and a white-box attack is
left out against a defense that gradients cannot flow through."""

from benchmark.api.attack import ThreatModel
from benchmark.api.registry import ATTACKS
from benchmark.harness.config import RunConfig
from benchmark.harness.resolve import resolve


def test_all_expands_to_every_attack_that_needs_no_data():
    config = resolve(RunConfig(model="sd-mini", attacks=["all"])).config
    assert config.attacks[0] == "none"
    for name in ("paraphrase", "ring-a-bell", "unlearndiff"):
        assert name in config.attacks
    assert "prompt-set" not in config.attacks


def test_all_leaves_out_an_attack_that_cannot_run_on_the_task_and_says_why():
    plan = resolve(RunConfig(model="tiny-random", tasks=["toy"], attacks=["all"]))
    assert "ring-a-bell" not in plan.config.attacks and "unlearndiff" in plan.config.attacks
    assert any("ring-a-bell left out of 'all'" in note and "concept material" in note for note in plan.notes)


def test_threat_models_and_applicability():
    assert ATTACKS.get("paraphrase").threat_model is ThreatModel.PROMPT_SET
    assert ATTACKS.get("ring-a-bell").threat_model is ThreatModel.TEXT_ENCODER
    unlearndiff = ATTACKS.get("unlearndiff")()
    assert unlearndiff.threat_model is ThreatModel.WHITE_BOX

    class Opaque:
        differentiable = False

    class Open:
        differentiable = True

    assert not unlearndiff.allowed_against(Opaque()) and unlearndiff.allowed_against(Open())
    assert ATTACKS.get("ring-a-bell")().allowed_against(Opaque())
    assert ATTACKS.get("paraphrase")().allowed_against(Opaque())
