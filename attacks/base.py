"""Deprecated: the attack interface's import path before ``benchmark.api``. Kept for one release; import from
``benchmark.api`` instead."""

from benchmark.api.deprecated import moved

moved("attacks.base", "from benchmark.api import Attack, AttackContext, AttackOutput, ThreatModel")

from benchmark.api.attack import Attack, AttackContext, AttackOutput, ThreatModel, preset_budget  # noqa: E402

__all__ = ["Attack", "AttackContext", "AttackOutput", "ThreatModel", "preset_budget"]
