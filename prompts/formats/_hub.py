"""Whether a loader may use the Hugging Face hub (private; shared by the formats and the prompt-set specs).

Nothing in this package reaches the network unless it is allowed explicitly, and the optional ``datasets``
package is only ever imported by the loader that uses it, so nothing here can hang offline.
"""

from __future__ import annotations

import importlib.util
import os

from prompts.formats._build import TRUE_WORDS

NETWORK_ENV = "UNLEARN_ARENA_ALLOW_NETWORK"


def network_allowed(allow_network: bool | None = None) -> bool:
    """Whether a loader may reach the network: ``allow_network`` if given, else the environment variable
    ``UNLEARN_ARENA_ALLOW_NETWORK`` (1/true/yes). ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` veto it."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in TRUE_WORDS:
            return False
    if allow_network is not None:
        return bool(allow_network)
    return os.environ.get(NETWORK_ENV, "").strip().lower() in TRUE_WORDS


def datasets_available() -> bool:
    """Whether the optional ``datasets`` package is installed (it is never imported at module import)."""
    return importlib.util.find_spec("datasets") is not None
