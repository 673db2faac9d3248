"""Option types the built-in defenses share."""

from __future__ import annotations

from typing import Any

from benchmark.api.errors import ConfigError


def comma_list(value: Any) -> Any:
    """A list option given on the command line as ``a, b`` arrives as one string: split it at commas
    (blank parts dropped). Anything else is left to the field's type."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def concept_text(component: str, option: str, value: str | None, task) -> str:
    """``value``, else the task's concept words joined by ", "; a :class:`ConfigError` saying what to pass
    when both are empty (a defense that would otherwise run as a silent no-op)."""
    text = value or ", ".join(task.concept_words)
    if not text.strip():
        raise ConfigError(f"defense '{component}' needs the concept to act on, and task '{task.name}' has no "
                          f"concept_words: pass --option defense:{component}.{option}=...")
    return text
