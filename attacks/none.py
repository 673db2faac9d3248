"""No attack: the task's prompts as they are. Its ASR is ASR(none), the pre-attack rate."""

from __future__ import annotations

from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.registry import ATTACKS


@ATTACKS.register("none")
class NoAttack(Attack):
    """The task's prompts as they are (gives ASR(none), the pre-attack rate)."""

    threat_model = ThreatModel.PROMPT_SET

    def run(self, prompts, ctx):
        return [AttackOutput(prompt_id=p.id, text=p.text) for p in prompts]
