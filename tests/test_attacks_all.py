"""`--attack all` expands to every registered attack that runs without user data, and a white-box attack is
left out against a defense that gradients cannot flow through."""

from attacks.base import ThreatModel
from benchmark.config import RunConfig
from benchmark.registry import ATTACKS
from benchmark.runner import resolve


def test_all_expands_to_every_attack_that_needs_no_data():
    config, _ = resolve(RunConfig(model="tiny-random", attacks=["all"]))
    assert config.attacks[0] == "none"
    for name in ("paraphrase", "ring-a-bell", "unlearndiff"):
        assert name in config.attacks
    assert "prompt-set" not in config.attacks


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
