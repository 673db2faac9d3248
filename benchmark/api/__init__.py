"""The core API: everything a defense, attack, judge, model, task or prompt set imports, and nothing else.

Built-ins in ``attacks/``, ``defenses/``, ``prompts/``, ``benchmark/judges/`` and ``benchmark/models/`` import
only this package (and their own helpers); the stages, the runner and the CLI sit on top of them; reports
read records and entries. An import-linter contract in ``pyproject.toml`` keeps it so.

    from benchmark.api import DEFENSES, Defense, DefenseKind, DefendedPipeline

Names resolve lazily (PEP 562): importing the registry, the errors or the paths does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "errors": ["UserError", "ConfigError", "OptionError", "UnknownEntryError", "PathEscapeError",
               "ModelUnavailableError", "JudgeLoadError", "DataFileError", "RunFailedError"],
    "registry": ["DEFENSES", "ATTACKS", "JUDGES", "MODELS", "TASKS", "PROMPT_SETS", "SUITES", "Registry",
                 "load_plugin"],
    "component": ["Component", "CheckContext", "NoOptions", "OptionInfo"],
    "defense": ["Defense", "DefendedPipeline", "DefenseKind", "PrepareContext"],
    "attack": ["Attack", "AttackContext", "AttackOutput", "ThreatModel", "preset_budget"],
    "presets": ["Presets", "SMALL_MODELS", "MINI_ON_SMALL_MODELS"],
    "judge": ["Judge", "JudgeIdentity", "JudgeResult"],
    "task": ["Task", "JudgeSpec"],
    "model": ["ModelSpec", "LoadedModel", "SamplerDefaults", "get_model_spec"],
    "prompt": ["Prompt", "PromptFileError"],
    "sampling": ["draw", "image_seed", "initial_latents"],
    "paths": ["check_name"],
    "files": ["FilePath", "LocalPath", "PathOrHubId", "content_hash"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'benchmark.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"benchmark.api.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
